"""Training speed of the course's GPT against Hugging Face's ``GPT2LMHeadModel``, same sizes and batch."""

from __future__ import annotations

import torch

from benchmarks.timing import alternate
from llmcourse.device import pick_device
from llmcourse.objectives import causal_lm_loss
from llmcourse.transformer import GPT, GPTConfig

# The character model's vocabulary, six layers 384 wide (nanoGPT's "baby" Shakespeare size).
VOCAB, LAYERS, HEADS, WIDTH, BLOCK, BATCH = 65, 6, 6, 384, 256, 8


def gpt_train_speed_vs_hf(repeats: int) -> dict[str, float]:
    """Training tokens/s (forward, loss, backward, AdamW step) of our GPT over GPT2LMHeadModel's.

    Both compute the same function: GPT-2's tanh GELU, pre-LN blocks, tied output layer, no
    dropout, fp32 (bf16 autocast on CUDA), the same batch of random token ids.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    device = pick_device()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_positions=BLOCK, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new", bos_token_id=0, eos_token_id=0,
    )).to(device)
    ours = GPT.from_hf_gpt2(hf).to(device)  # the same weights: gelu_approximate="tanh"
    assert ours.config == GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layers=LAYERS, n_heads=HEADS,
                                    d_model=WIDTH, d_ff=4 * WIDTH, gelu_approximate="tanh")
    ids = torch.randint(0, VOCAB, (BATCH, BLOCK), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    optimizers = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, hf)}

    def step(model: torch.nn.Module, loss_of: object) -> None:
        with autocast:
            loss = loss_of()
        loss.backward()
        optimizers[id(model)].step()
        optimizers[id(model)].zero_grad(set_to_none=True)

    def run_ours() -> None:
        step(ours, lambda: causal_lm_loss(ours(ids), ids))

    def run_hf() -> None:
        step(hf, lambda: hf(input_ids=ids, labels=ids).loss)

    with torch.no_grad():  # same function before any step
        assert torch.allclose(ours(ids), hf(input_ids=ids).logits, atol=1e-4)
    t_ours, t_hf = alternate(run_ours, run_hf, repeats)
    tokens = BATCH * BLOCK
    return {"gpt_train_speed_vs_hf": t_hf / t_ours, "gpt_train_tokens_per_s_ours": tokens / t_ours,
            "gpt_train_tokens_per_s_hf": tokens / t_hf}
