"""Converters: weights saved by other libraries, in the course's own models.

``gpt_from_hf_gpt2``: Hugging Face's ``GPT2LMHeadModel`` (or its state dict) as ``llmcourse.transformer.GPT``.
SmolLM2's weights reach ``llmcourse.llama.LlamaDecoder`` by name (``LlamaDecoder.from_transformers``)
or from its GGUF file (``llmcourse.quantization.read_gguf_llama``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from llmcourse.transformer import GPT, GPTConfig

__all__ = ["gpt_from_hf_gpt2"]


def gpt_from_hf_gpt2(source: nn.Module | Mapping[str, Tensor], n_heads: int | None = None) -> GPT:
    """A GPT holding Hugging Face GPT-2 weights (a ``GPT2LMHeadModel`` or its state dict); same logits.

    GPT-2's ``Conv1D`` layers store weights as (in, out) and compute ``x W + b``; ``nn.Linear``
    stores (out, in), so every matrix is transposed, and the fused query/key/value matrix is
    cut in three. A state dict does not record the number of heads: pass ``n_heads``.
    """
    layer_norm_eps, approximate = 1e-5, "tanh"
    if isinstance(source, nn.Module):
        hf = source.config
        n_heads, layer_norm_eps = hf.n_head, hf.layer_norm_epsilon
        approximate = {"gelu": "none"}.get(hf.activation_function, "tanh")  # gelu_new: tanh
        source = source.state_dict()
    if n_heads is None:
        raise ValueError("a state dict does not say how many heads the model has; pass n_heads=")
    state = {key.removeprefix("transformer."): value for key, value in source.items()}
    vocab_size, d_model = state["wte.weight"].shape
    n_layers = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("h."))
    config = GPTConfig(
        vocab_size=vocab_size, block_size=state["wpe.weight"].shape[0], n_layers=n_layers, n_heads=n_heads,
        d_model=d_model, d_ff=state["h.0.mlp.c_fc.weight"].shape[1], layer_norm_eps=layer_norm_eps,
        gelu_approximate=approximate,
    )
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["wte.weight"]):
        raise ValueError("this GPT-2 does not tie its output layer to the token embedding")
    ours = {
        "token_embedding.weight": state["wte.weight"],
        "position_embedding.weight": state["wpe.weight"],
        "norm.weight": state["ln_f.weight"],
        "norm.bias": state["ln_f.bias"],
        "lm_head.weight": state["wte.weight"],
    }
    for i in range(n_layers):
        hf_layer, layer = f"h.{i}.", f"blocks.{i}."
        weights = state[hf_layer + "attn.c_attn.weight"].t().chunk(3)  # 3 x (d, d), (out, in)
        biases = state[hf_layer + "attn.c_attn.bias"].chunk(3)
        for name, weight, bias in zip(("w_q", "w_k", "w_v"), weights, biases):
            ours[f"{layer}attn.{name}.weight"] = weight
            ours[f"{layer}attn.{name}.bias"] = bias
        for ours_name, hf_name in (("attn.w_o", "attn.c_proj"), ("ffn.fc_in", "mlp.c_fc"), ("ffn.fc_out", "mlp.c_proj")):
            ours[f"{layer}{ours_name}.weight"] = state[f"{hf_layer}{hf_name}.weight"].t()
            ours[f"{layer}{ours_name}.bias"] = state[f"{hf_layer}{hf_name}.bias"]
        for ours_name, hf_name in (("norm1", "ln_1"), ("norm2", "ln_2")):
            ours[f"{layer}{ours_name}.weight"] = state[f"{hf_layer}{hf_name}.weight"]
            ours[f"{layer}{ours_name}.bias"] = state[f"{hf_layer}{hf_name}.bias"]
    model = GPT(config).to(state["wte.weight"].dtype)
    model.load_state_dict(ours)
    return model
