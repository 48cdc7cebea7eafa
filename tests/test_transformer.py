"""llmcourse.transformer against PyTorch's Transformer layers (weights copied across) and the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmcourse.attention import MultiHeadAttention, causal_mask
from llmcourse.transformer import (
    GPT,
    DecoderBlock,
    Encoder,
    EncoderConfig,
    FeedForward,
    GPTConfig,
    MLMEncoder,
    TransformerBlock,
    sinusoidal_positions,
)

TOL = {"atol": 1e-12, "rtol": 1e-12}


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    """Copy PyTorch's packed in-projection (q, k, v stacked) and out-projection into our four Linears."""
    with torch.no_grad():
        for ours_linear, weight, bias in zip(
            (ours.w_q, ours.w_k, ours.w_v),
            theirs.in_proj_weight.chunk(3),
            theirs.in_proj_bias.chunk(3),
        ):
            ours_linear.weight.copy_(weight)
            ours_linear.bias.copy_(bias)
        ours.w_o.weight.copy_(theirs.out_proj.weight)
        ours.w_o.bias.copy_(theirs.out_proj.bias)


def copy_linear_and_norm(pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    with torch.no_grad():
        for ours, theirs in pairs:
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)


def randomise(module: nn.Module, seed: int) -> None:
    """Give every parameter (LayerNorm ones included) random values, so no copy can go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def encoder_pair(norm_first: bool, seed: int = 0) -> tuple[TransformerBlock, nn.TransformerEncoderLayer]:
    d_model, n_heads, d_ff = 16, 4, 40
    theirs = nn.TransformerEncoderLayer(
        d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    ).double()
    randomise(theirs, seed)
    ours = TransformerBlock(d_model, n_heads, d_ff, dropout=0.0, norm_first=norm_first).double()
    copy_attention(ours.attn, theirs.self_attn)
    copy_linear_and_norm([
        (ours.ffn.fc_in, theirs.linear1), (ours.ffn.fc_out, theirs.linear2),
        (ours.norm1, theirs.norm1), (ours.norm2, theirs.norm2),
    ])
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_block_matches_torch_encoder_layer(norm_first: bool, causal: bool) -> None:
    ours, theirs = encoder_pair(norm_first)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        if causal:
            # PyTorch's bool masks say True = *blocked*; ours say True = may attend.
            expected = theirs(x, src_mask=~causal_mask(7), is_causal=True)
            got = ours(x, is_causal=True)
            got_from_mask = ours(x, mask=causal_mask(7))
            torch.testing.assert_close(got_from_mask, expected, **TOL)
        else:
            expected = theirs(x)
            got = ours(x)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_padding_mask_matches_torch_key_padding_mask(norm_first: bool) -> None:
    ours, theirs = encoder_pair(norm_first, seed=3)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        expected = theirs(x, src_key_padding_mask=~real)
        got = ours(x, mask=real[:, None, None, :])
    # PyTorch's fast path may zero the padded positions' outputs; compare the real ones.
    torch.testing.assert_close(got[real], expected[real], **TOL)


def test_pre_ln_and_post_ln_differ() -> None:
    pre, _ = encoder_pair(norm_first=True)
    post, _ = encoder_pair(norm_first=False)
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    with torch.no_grad():
        assert (pre(x) - post(x)).abs().max() > 1e-3


def test_post_ln_output_is_normalised() -> None:
    # Post-LN ends with a LayerNorm (weight 1, bias 0 at init): every position comes out standardised.
    block = TransformerBlock(16, 4, 32, norm_first=False).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64) * 10 + 3
    with torch.no_grad():
        y = block(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 6, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(2, 6, dtype=torch.float64), atol=1e-4, rtol=0)


def test_feed_forward_is_linear_gelu_linear() -> None:
    ffn = FeedForward(6, 10).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    h = x @ ffn.fc_in.weight.T + ffn.fc_in.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(ffn(x), h @ ffn.fc_out.weight.T + ffn.fc_out.bias, **TOL)


def test_block_is_causal_really_hides_the_future() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 16).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    changed = x.clone()
    changed[:, -1] = torch.randn(8, dtype=torch.float64)  # not a constant shift: LayerNorm would erase that
    with torch.no_grad():
        a, b = block(x, is_causal=True), block(changed, is_causal=True)
        torch.testing.assert_close(a[:, :-1], b[:, :-1], **TOL)
        assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3
        # Without the mask the first position does see the last one.
        assert (block(x)[:, 0] - block(changed)[:, 0]).abs().max() > 1e-6


def decoder_pair(norm_first: bool) -> tuple[DecoderBlock, nn.TransformerDecoderLayer]:
    d_model, n_heads, d_ff = 12, 3, 20
    theirs = nn.TransformerDecoderLayer(
        d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    ).double()
    randomise(theirs, 5)
    ours = DecoderBlock(d_model, n_heads, d_ff, norm_first=norm_first).double()
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_attention(ours.cross_attn, theirs.multihead_attn)
    copy_linear_and_norm([
        (ours.ffn.fc_in, theirs.linear1), (ours.ffn.fc_out, theirs.linear2),
        (ours.norm1, theirs.norm1), (ours.norm2, theirs.norm2), (ours.norm3, theirs.norm3),
    ])
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_block_matches_torch_decoder_layer(norm_first: bool) -> None:
    ours, theirs = decoder_pair(norm_first)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 12, generator=g, dtype=torch.float64)  # T_q = 4
    memory = torch.randn(2, 9, 12, generator=g, dtype=torch.float64)  # T_k = 9
    memory_real = torch.ones(2, 9, dtype=torch.bool)
    memory_real[1, 6:] = False
    with torch.no_grad():
        expected = theirs(x, memory, tgt_mask=~causal_mask(4), tgt_is_causal=True,
                          memory_key_padding_mask=~memory_real)
        got = ours(x, memory, memory_mask=memory_real[:, None, None, :])
        torch.testing.assert_close(got, expected, **TOL)
        # The memory really matters: change it, the output changes.
        assert (ours(x, memory + 1.0, memory_mask=memory_real[:, None, None, :]) - got).abs().max() > 1e-3


def test_sinusoidal_positions_match_the_formula() -> None:
    length, d_model = 50, 16
    pe = sinusoidal_positions(length, d_model, dtype=torch.float64)
    assert pe.shape == (length, d_model) and pe.dtype == torch.float64
    for pos in (0, 1, 7, 49):
        for j in range(d_model):
            i = j // 2
            angle = pos / 10000 ** (2 * i / d_model)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert pe[pos, j].item() == pytest.approx(expected, abs=1e-12)
    assert sinusoidal_positions(3, 4).dtype == torch.float32
    with pytest.raises(ValueError):
        sinusoidal_positions(3, 5)


def test_sinusoidal_dot_product_depends_only_on_offset() -> None:
    pe = sinusoidal_positions(64, 32, dtype=torch.float64)
    gram = pe @ pe.T  # (64, 64)
    for offset in (0, 1, 5, 20):
        diagonal = torch.diagonal(gram, offset)
        # sum_i cos(offset * w_i): the same for every pair of positions that far apart
        expected = sum(math.cos(offset / 10000 ** (2 * i / 32)) for i in range(16))
        torch.testing.assert_close(diagonal, torch.full_like(diagonal, expected), atol=1e-10, rtol=0)
    # Each position's norm is sqrt(d_model / 2); nearer positions are more similar than far ones.
    torch.testing.assert_close(pe.norm(dim=-1), torch.full((64,), 4.0, dtype=torch.float64))
    assert gram[10, 11] > gram[10, 30]


def test_sinusoidal_offset_is_a_rotation() -> None:
    # PE[pos + k] is a fixed linear map (a rotation per frequency pair) of PE[pos], for every pos.
    d_model, k = 8, 3
    pe = sinusoidal_positions(40, d_model, dtype=torch.float64)
    rotation = torch.linalg.lstsq(pe[:-k], pe[k:]).solution  # (d_model, d_model)
    torch.testing.assert_close(pe[:-k] @ rotation, pe[k:], atol=1e-9, rtol=0)
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(d_model, dtype=torch.float64), atol=1e-8, rtol=0)


# ---------------------------------------------------------------------------------------------
# GPT, encoder, MLM encoder


def tiny_hf_gpt2(seed: int = 0, activation: str = "gelu_new"):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=61, n_positions=24, n_embd=32, n_layer=3, n_head=4, bos_token_id=0,
                        eos_token_id=0, activation_function=activation, attn_implementation="eager")
    hf = GPT2LMHeadModel(config).double().eval()
    randomise(hf.transformer.h, seed + 1)  # LayerNorms and biases away from 1 and 0 too
    return hf


@pytest.mark.parametrize("from_state_dict", [False, True])
def test_gpt_from_hf_gpt2_gives_the_same_logits(from_state_dict: bool) -> None:
    hf = tiny_hf_gpt2()
    ours = (GPT.from_hf_gpt2(hf.state_dict(), n_heads=4) if from_state_dict else GPT.from_hf_gpt2(hf)).eval()
    assert ours.config.gelu_approximate == "tanh" and ours.config.n_layers == 3 and ours.config.d_ff == 128
    ids = torch.randint(0, 61, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, **TOL)
        # The approximation matters: the exact GELU gives other logits.
        ours.blocks[0].ffn.gelu.approximate = "none"
        assert (ours(ids) - hf(ids).logits).abs().max() > 1e-6


def test_gpt_from_hf_gpt2_with_exact_gelu_and_errors() -> None:
    hf = tiny_hf_gpt2(activation="gelu")
    ours = GPT.from_hf_gpt2(hf).eval()
    assert ours.config.gelu_approximate == "none"
    ids = torch.randint(0, 61, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, **TOL)
    with pytest.raises(ValueError, match="n_heads"):
        GPT.from_hf_gpt2(hf.state_dict())
    untied = dict(hf.state_dict())
    untied["lm_head.weight"] = untied["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="tie"):
        GPT.from_hf_gpt2(untied, n_heads=4)


def small_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 23, "block_size": 12, "n_layers": 2, "n_heads": 2, "d_model": 16, **overrides}))


def test_gpt_ties_its_output_layer_to_the_embedding() -> None:
    model = small_gpt()
    assert model.lm_head.weight is model.token_embedding.weight
    # counted once, as Transformers counts GPT-2 of the same shape: embeddings 23*16 + 12*16, two blocks,
    # the final norm, no separate head matrix. A block by hand: two norms, attention's four 16 x 16
    # projections with biases, the feed-forward 16 -> 64 -> 16.
    from transformers import GPT2Config, GPT2LMHeadModel

    block = 2 * 32 + 4 * (16 * 16 + 16) + (16 * 64 + 64) + (64 * 16 + 16)
    assert model.num_parameters() == 23 * 16 + 12 * 16 + 2 * block + 2 * 16
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=23, n_positions=12, n_embd=16, n_layer=2, n_head=2))
    assert model.num_parameters() == hf.num_parameters()
    assert model.num_parameters(non_embedding=True) == 2 * block + 2 * 16
    untied = small_gpt(tie_weights=False)
    assert untied.num_parameters() == model.num_parameters() + 23 * 16
    # the gradient reaching the shared matrix is the sum of both uses
    ids = torch.randint(0, 23, (2, 12))
    model(ids).logsumexp(-1).sum().backward()
    assert model.token_embedding.weight.grad is model.lm_head.weight.grad
    assert model.token_embedding.weight.grad[ids.flatten().unique()].abs().sum() > 0


def test_gpt_is_causal_and_checks_length() -> None:
    model = small_gpt().eval()
    ids = torch.randint(0, 23, (1, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 23
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4
    assert a.shape == (1, 12, 23)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_gpt_initialisation_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layers=8, d_model=64, n_heads=4))
    assert model.blocks[0].attn.w_q.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.w_o.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(2 * 8)
    assert model.blocks[0].ffn.fc_in.bias.abs().max() == 0


def test_generate_greedy_and_sampling() -> None:
    model = small_gpt().eval()
    prompt = torch.tensor([[1, 2, 3]])
    greedy = model.generate(prompt, 15, temperature=0)  # longer than block_size: the context is cropped
    assert greedy.shape == (1, 18) and torch.equal(greedy[:, :3], prompt)
    ids = prompt
    for _ in range(15):
        ids = torch.cat([ids, model(ids[:, -12:])[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, ids)
    assert torch.equal(model.generate(prompt, 15, top_k=1), greedy)  # top-1 sampling is greedy
    a = model.generate(prompt, 15, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 15, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_save_and_load_pretrained(tmp_path) -> None:
    model = small_gpt(gelu_approximate="tanh").eval()
    model.save_pretrained(tmp_path / "gpt")
    loaded = GPT.from_pretrained(tmp_path / "gpt").eval()
    assert loaded.config == model.config and loaded.lm_head.weight is loaded.token_embedding.weight
    ids = torch.randint(0, 23, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    encoder = MLMEncoder(EncoderConfig(vocab_size=30, block_size=10, n_layers=1, n_heads=2, d_model=8)).eval()
    encoder.save_pretrained(tmp_path / "mlm")
    again = MLMEncoder.from_pretrained(tmp_path / "mlm").eval()
    ids = torch.randint(0, 30, (2, 10))
    with torch.no_grad():
        for x, y in zip(again(ids), encoder(ids)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="MLMEncoder"):
        GPT.from_pretrained(tmp_path / "mlm")
    with pytest.raises(FileNotFoundError):
        GPT.from_pretrained(tmp_path / "nothing")


def test_encoder_is_bidirectional_and_ignores_padding() -> None:
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(vocab_size=30, block_size=10, n_layers=2, n_heads=2, d_model=16)).eval()
    ids = torch.randint(1, 30, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)  # 4 padding tokens (id 0)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    with torch.no_grad():
        alone = encoder(ids)
        torch.testing.assert_close(encoder(padded, mask)[:, :6], alone)
        assert (encoder(padded)[:, :6] - alone).abs().max() > 1e-4  # without the mask padding leaks in
        changed = ids.clone()
        changed[0, -1] = (ids[0, -1] + 1) % 30
        assert (encoder(changed)[:, 0] - alone[:, 0]).abs().max() > 1e-4  # the first token sees the last
        # segment embeddings change the output
        assert (encoder(ids, segment_ids=torch.ones_like(ids)) - alone).abs().max() > 1e-4


def test_mlm_encoder_heads() -> None:
    torch.manual_seed(0)
    model = MLMEncoder(EncoderConfig(vocab_size=30, block_size=10, n_layers=1, n_heads=2, d_model=16))
    assert model.mlm_head.weight is model.encoder.token_embedding.weight
    mlm_logits, nsp_logits = model(torch.randint(0, 30, (3, 10)), torch.ones(3, 10, dtype=torch.long))
    assert mlm_logits.shape == (3, 10, 30) and nsp_logits.shape == (3, 2)
    # counted by hand, the tied MLM matrix once: embeddings (30 tokens, 10 positions, 2 segments) and a
    # final norm; one block (attention 4 x (16x16 + 16), two norms, FFN 16 -> 64 -> 16); the MLM head's
    # transform and its own bias; the NSP head (16x16 + 16, then 16 x 2 + 2)
    block = 4 * (16 * 16 + 16) + 2 * 32 + (16 * 64 + 64) + (64 * 16 + 16)
    assert sum(p.numel() for p in model.encoder.blocks[0].parameters()) == block
    expected = (30 + 10 + 2) * 16 + 32 + block + (16 * 16 + 16 + 32 + 30) + (16 * 16 + 16 + 16 * 2 + 2)
    assert model.num_parameters() == expected


def test_feed_forward_tanh_gelu_option() -> None:
    ffn = FeedForward(6, 10, gelu_approximate="tanh").double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    h = x @ ffn.fc_in.weight.T + ffn.fc_in.bias
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(ffn(x), h @ ffn.fc_out.weight.T + ffn.fc_out.bias, **TOL)
