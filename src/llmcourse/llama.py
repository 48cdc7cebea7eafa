"""A modern decoder, the shape of Llama, Mistral, Qwen and SmolLM2, in one short file.

Four changes to the 2017-2019 block (``llmcourse.transformer``), each its own class here:

* **RMSNorm** (Zhang & Sennrich, 2019) instead of LayerNorm: scale each vector by the root of its
  mean square, with no mean subtracted and no bias; cheaper, and as good in practice.
* **Rotary position embeddings**, RoPE (Su et al., 2021), instead of learned positions added to the
  input: every query and key is rotated, pair of features by pair of features, by an angle
  proportional to its position, so the score of a query and a key depends on their offset only.
* **SwiGLU** feed-forward (Shazeer, 2020): ``down(silu(gate(x)) * up(x))`` instead of ``W2 gelu(W1 x)``.
* **Grouped-query attention**, GQA (Ainslie et al., 2023): fewer key/value heads than query heads,
  each shared by a group of query heads, so the key/value cache shrinks by the group size.

Blocks are pre-norm, there are no biases, and the output layer is tied to the token embedding.
Parameter names follow Transformers' ``LlamaForCausalLM`` (``q_proj``, ``k_proj``, ``v_proj``,
``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``, ``input_layernorm``,
``post_attention_layernorm``), so real weights load by name (``LlamaDecoder.from_transformers``) and
the two can be read side by side. ``tests/test_llama.py`` checks each piece against Transformers and
the whole model's logits and greedy text on SmolLM2-135M-Instruct.

Shapes in comments: B batch, T new positions, P cached positions, d model width, h query heads,
h_kv key/value heads, d_h head width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.attention import KVCache, LayerKVCache, causal_mask, scaled_dot_product_attention

__all__ = [
    "LlamaConfig",
    "RMSNorm",
    "RotaryEmbedding",
    "rotate_half",
    "apply_rotary",
    "repeat_kv",
    "GroupedQueryAttention",
    "SwiGLU",
    "LlamaBlock",
    "LlamaDecoder",
]


@dataclass
class LlamaConfig:
    """The shape of a Llama-style decoder. The defaults are SmolLM2-135M's."""

    vocab_size: int = 49152
    d_model: int = 576
    n_layers: int = 30
    n_heads: int = 9  # query heads
    n_kv_heads: int = 3  # key/value heads, each shared by n_heads // n_kv_heads query heads
    d_head: int = 64
    d_ff: int = 1536  # width of the SwiGLU hidden layer
    norm_eps: float = 1e-5
    rope_theta: float = 100_000.0  # the base of the rotation frequencies
    block_size: int = 8192  # the longest sequence (positions the rotary tables cover)
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}: "
                             "each key/value head serves a whole group of query heads")
        if self.d_head % 2 != 0:
            raise ValueError(f"d_head={self.d_head} must be even: rotary embeddings turn features in pairs")

    @classmethod
    def from_transformers(cls, config: Any) -> LlamaConfig:
        """The same shape as a Transformers ``LlamaConfig``."""
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"only plain RoPE is implemented here, not rope_type={rope['rope_type']!r}")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise ValueError("this decoder has no biases; the model's config asks for some")
        n_heads = config.num_attention_heads
        return cls(
            vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=config.num_hidden_layers,
            n_heads=n_heads, n_kv_heads=config.num_key_value_heads,
            d_head=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
            d_ff=config.intermediate_size, norm_eps=config.rms_norm_eps,
            rope_theta=rope.get("rope_theta", getattr(config, "rope_theta", 10_000.0)),
            block_size=config.max_position_embeddings, tie_embeddings=config.tie_word_embeddings,
        )


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, computed in float32."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # (..., d) -> (..., d)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # eps inside the root
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Cosines and sines of the rotation angles ``position * theta^(-2i / d_h)``, cached for every position.

    Feature ``i`` of the first half of a head is paired with feature ``i + d_h / 2`` (the layout of
    Transformers' Llama; the original paper pairs neighbours ``2i, 2i + 1``, which is the same
    rotation applied to permuted weights). Both halves of the tables repeat the same angles.
    """

    def __init__(self, d_head: int, theta: float = 10_000.0, max_length: int = 8192) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head)  # (d_h/2,)
        angles = torch.outer(torch.arange(max_length).float(), inv_freq)  # (max_length, d_h/2)
        angles = torch.cat([angles, angles], dim=-1)  # (max_length, d_h)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        """(length, d_h) cosines and sines of positions ``start .. start + length - 1``."""
        end = start + length
        if end > self.cos.shape[0]:
            raise ValueError(f"position {end - 1} is past the {self.cos.shape[0]} positions of the rotary tables "
                             "(block_size): use a shorter text or a model made with a larger block_size")
        return self.cos[start:end], self.sin[start:end]


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a quarter turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate every pair of features of x (B, heads, T, d_h) by its position's angle (cos, sin: (T, d_h))."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(B, h_kv, T, d_h) -> (B, h_kv * groups, T, d_h): query head j reads key/value head j // groups."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with rotary positions and ``n_kv_heads`` key/value heads for ``n_heads`` queries.

    ``fused=True`` (the default) calls PyTorch's ``scaled_dot_product_attention`` with
    ``enable_gqa``; ``fused=False`` repeats the key/value heads and runs the course's readable
    ``scaled_dot_product_attention``. Both give the same output.
    """

    def __init__(self, config: LlamaConfig, fused: bool = True) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head = config.n_heads, config.n_kv_heads, config.d_head
        self.fused = fused
        self.q_proj = nn.Linear(config.d_model, config.n_heads * config.d_head, bias=False)
        self.k_proj = nn.Linear(config.d_model, config.n_kv_heads * config.d_head, bias=False)
        self.v_proj = nn.Linear(config.d_model, config.n_kv_heads * config.d_head, bias=False)
        self.o_proj = nn.Linear(config.n_heads * config.d_head, config.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerKVCache | None = None) -> Tensor:
        batch, length, _ = x.shape  # (B, T, d)
        q = self.q_proj(x).view(batch, length, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, T, d_h)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.d_head).transpose(1, 2)  # (B, h_kv, T, d_h)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.d_head).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # positions enter here, and only here
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(k, v)  # (B, h_kv, P + T, d_h): rotated keys are cached
        # Query i (position past + i) sees keys 0 .. past + i; one new token sees everything.
        mask = None if length == 1 else causal_mask(length, past + length, device=x.device, offset=past)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            groups = self.n_heads // self.n_kv_heads
            out, _ = scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), mask)
        out = out.transpose(1, 2).reshape(batch, length, self.n_heads * self.d_head)  # (B, T, h * d_h)
        return self.o_proj(out)  # (B, T, d)


class SwiGLU(nn.Module):
    """The gated feed-forward layer: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, T, d)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, d_ff) inside


class LlamaBlock(nn.Module):
    """A pre-norm block: ``x + attention(norm(x))``, then ``x + swiglu(norm(x))``."""

    def __init__(self, config: LlamaConfig, fused: bool = True) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = GroupedQueryAttention(config, fused)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerKVCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaDecoder(nn.Module):
    """Token embedding, ``n_layers`` blocks, a final RMSNorm and the (tied) output layer.

    It satisfies ``llmcourse.generation.Decoder``: ``generate`` and ``beam_search`` decode with it,
    with the key/value cache from ``new_cache``.
    """

    def __init__(self, config: LlamaConfig, fused: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(LlamaBlock(config, fused) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.rotary = RotaryEmbedding(config.d_head, config.rope_theta, config.block_size)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, input_ids: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """(B, T) token ids -> (B, T, V) logits (``last_only``: (B, 1, V), the last position's).

        With a ``cache`` holding P positions, ``input_ids`` are positions P .. P + T - 1.
        """
        past = 0 if cache is None else cache.length
        cos, sin = self.rotary(past, input_ids.shape[1])  # (T, d_h) each
        x = self.embed_tokens(input_ids)  # (B, T, d)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if cache is None else cache.layers[i])
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight  # (V, d)
        return F.linear(x, weight)  # (B, T, V)

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_length`` tokens, ``n_kv_heads`` per layer.

        Per token it holds ``2 * n_layers * n_kv_heads * d_head`` numbers: a third of what multi-head
        attention would keep for SmolLM2 (3 key/value heads for 9 query heads).
        """
        config = self.config
        max_length = config.block_size if max_length is None else min(max_length, config.block_size)
        weight = self.embed_tokens.weight
        return KVCache(config.n_layers, batch_size, config.n_kv_heads, config.d_head, max_length,
                       dtype=weight.dtype, device=weight.device)

    @property
    def num_parameters(self) -> int:
        """Parameters, the tied output layer counted once."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_transformers(cls, model: Any, fused: bool = True) -> LlamaDecoder:
        """This decoder with the weights of a Transformers ``LlamaForCausalLM`` (copied, same dtype and device).

        The parameter names are the same once Transformers' ``model.`` prefix is dropped.
        """
        config = LlamaConfig.from_transformers(model.config)
        weight = model.get_input_embeddings().weight
        with torch.device("meta"):
            decoder = cls(config, fused)
        state = {name.removeprefix("model."): tensor.detach().clone() for name, tensor in model.state_dict().items()}
        if config.tie_embeddings:
            state.pop("lm_head.weight", None)
        decoder.load_state_dict(state, strict=False, assign=True)
        missing = [name for name, p in decoder.named_parameters() if p.is_meta]
        if missing:
            raise ValueError(f"the Transformers model has no weights for {missing[:5]}: is it a Llama model?")
        decoder.rotary = RotaryEmbedding(config.d_head, config.rope_theta, config.block_size).to(weight.device)
        return decoder.to(weight.dtype).eval() if weight.is_floating_point() else decoder.eval()
