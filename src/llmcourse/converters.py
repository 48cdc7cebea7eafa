"""Converters: weights saved by other libraries, in the course's own models.

``gpt_from_hf_gpt2``: Hugging Face's ``GPT2LMHeadModel`` (or its state dict) as ``llmcourse.transformer.GPT``.
SmolLM2's weights reach ``llmcourse.llama.LlamaDecoder`` by name (``LlamaDecoder.from_transformers``)
or from its GGUF file: ``read_gguf_llama`` reads the file with ``llmcourse.quantization.read_gguf``,
dequantises every tensor, renames it (``gguf_to_llama_name``) and undoes llama.cpp's row order in the
query and key projections (``unpermute_rope_rows``); ``llama_config_from_gguf`` gives the shape.
``save_transformers_llama_from_gguf`` turns the same file into a plain Transformers folder (float32
safetensors and the tokenizer), which ``llmcourse.models.load_smollm2`` caches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from llmcourse.llama import LlamaConfig
from llmcourse.quantization import read_gguf
from llmcourse.transformer import GPT, GPTConfig

__all__ = ["gpt_from_hf_gpt2", "llama_config_from_gguf", "gguf_to_llama_name", "unpermute_rope_rows", "read_gguf_llama",
           "save_transformers_llama_from_gguf"]


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


# ---------------------------------------------------------------------------------------------
# SmolLM2's GGUF file into the course's LlamaDecoder

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


def gguf_to_llama_name(name: str) -> str:
    """llama.cpp's tensor name -> the decoder's: ``blk.3.ffn_up.weight`` -> ``layers.3.mlp.up_proj.weight``."""
    stem, _, kind = name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{kind}"
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{kind}"
    raise KeyError(f"no Llama parameter for the GGUF tensor {name!r}; "
                   f"known names: {', '.join(_TOP_NAMES)} and blk.N.{{{', '.join(_LAYER_NAMES)}}}")


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of a query or key projection's rows (out_features, in_features).

    Transformers' Llama rotates feature ``i`` of a head with feature ``i + d_h/2``; llama.cpp rotates
    neighbours ``2i, 2i + 1``, so its converter interleaves the two halves of every head's rows:
    GGUF rows ``2i`` and ``2i + 1`` are rows ``i`` and ``i + d_h/2``. Taking the even rows, then the odd
    ones, of each head puts them back. Whole rows move, and quantisation blocks lie inside rows, so the
    order in which the rows are unpermuted and dequantised does not matter.
    """
    rows, columns = weight.shape
    if rows % (2 * n_heads) != 0:
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of an even width")
    pairs = weight.reshape(n_heads, rows // n_heads // 2, 2, columns)  # (heads, d_h/2, 2, in)
    return pairs.transpose(1, 2).reshape(rows, columns)  # evens, then odds, head by head


def llama_config_from_gguf(metadata: dict[str, Any], tensor_names: Any = None) -> LlamaConfig:
    """The ``LlamaConfig`` (``llmcourse.llama``) that a llama-architecture GGUF file's metadata describes.

    Embeddings are tied unless ``tensor_names`` (GGUF's or the decoder's) include an output layer.
    """
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"the GGUF file's architecture is {arch!r}; this reader builds 'llama' models only")

    def field(key: str) -> Any:
        if f"llama.{key}" not in metadata:
            raise KeyError(f"the GGUF metadata has no llama.{key}: it cannot give the decoder's shape")
        return metadata[f"llama.{key}"]

    n_heads, d_model = int(field("attention.head_count")), int(field("embedding_length"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_size = len(tokens) if tokens is not None else int(field("vocab_size"))
    d_head = metadata.get("llama.attention.key_length") or metadata.get("llama.rope.dimension_count")
    return LlamaConfig(
        vocab_size=vocab_size, d_model=d_model, n_layers=int(field("block_count")), n_heads=n_heads,
        n_kv_heads=int(metadata.get("llama.attention.head_count_kv", n_heads)),
        d_head=int(d_head or d_model // n_heads), d_ff=int(field("feed_forward_length")),
        norm_eps=float(field("attention.layer_norm_rms_epsilon")),
        rope_theta=float(metadata.get("llama.rope.freq_base", 10_000.0)),
        block_size=int(field("context_length")),
        tie_embeddings=not any(name in (tensor_names or ()) for name in ("output.weight", "lm_head.weight")),
    )


def read_gguf_llama(path: str | os.PathLike[str] | None = None,
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)``: a llama GGUF file's weights as float32 under ``LlamaDecoder``'s names.

    ``path`` defaults to SmolLM2-135M-Instruct's file. Every tensor is dequantised (``quantization.dequantize``);
    the query and key projections are unpermuted (``unpermute_rope_rows``). Build the model with
    ``LlamaDecoder(llama_config_from_gguf(metadata, state_dict))`` and ``load_state_dict(state_dict)``.
    """
    if path is None:
        from llmcourse.models import smollm2_gguf_path

        path = smollm2_gguf_path()
    gguf = read_gguf(path)
    config = llama_config_from_gguf(gguf.metadata, gguf.tensors)
    state = {}
    for name in gguf.tensors:
        weight = torch.from_numpy(gguf.read(name))
        if ".attn_q." in name:
            weight = unpermute_rope_rows(weight, config.n_heads)
        elif ".attn_k." in name:
            weight = unpermute_rope_rows(weight, config.n_kv_heads)
        state[gguf_to_llama_name(name)] = weight.contiguous()
    return state, gguf.metadata


def save_transformers_llama_from_gguf(gguf_file: str | os.PathLike[str], folder: str | os.PathLike[str],
                                      name_or_path: str, progress: bool = False) -> None:
    """Write a GGUF Llama as a Transformers folder: float32 weights (``save_pretrained``) and its tokenizer.

    Transformers reads the GGUF file itself (de-quantising every tensor) but will not save a model it
    loaded that way, so the weights are copied into a plain ``LlamaForCausalLM`` of the same config.
    ``name_or_path`` is recorded in the saved config as the model's origin.
    """
    from pathlib import Path

    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf_file = Path(gguf_file)
    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
    try:
        quantized = LlamaForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                     dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, local_files_only=True)
    finally:
        hf_logging.disable_progress_bar()
    config = quantized.config
    del config.quantization_config
    config.name_or_path = name_or_path
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
