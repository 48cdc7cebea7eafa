"""Attention: scaled dot-product attention, masks and multi-head attention.

Mask convention (the same as ``torch.nn.functional.scaled_dot_product_attention``): a bool
tensor broadcastable to the scores ``(..., T_q, T_k)`` where **True means "may attend"**.
A query whose row is entirely False attends to nothing: its weights and output are zeros.

Two paths compute the same thing. The readable one spells out
``softmax(Q K^T / sqrt(d_k)) V`` and returns the weights, for teaching and plots. The fast
one calls PyTorch's fused kernel (flash / memory-efficient attention where available).

``KVCache`` keeps the keys and values of past positions while a decoder generates text one
token at a time, so each new token costs one position's work instead of the whole prefix's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "combine_masks",
    "LayerKVCache",
    "KVCache",
    "MultiHeadAttention",
]


def _check_mask(mask: Tensor | None, scores_shape: torch.Size) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}; "
            "convert a 0/1 attention_mask with `mask.bool()` or build one with padding_mask()."
        )
    try:
        torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError as err:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores {tuple(scores_shape)} "
            "(..., T_q, T_k); add singleton dims, e.g. mask[:, None, None, :] for a (B, T) padding mask."
        ) from err


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Readable attention: return ``(softmax(q k^T / sqrt(d_k)) v, weights)``.

    Shapes: q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v) -> output (..., T_q, d_v),
    weights (..., T_q, T_k). Leading dims broadcast (batch, heads, ...).
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys need the same width d_k, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys and values need the same length T_k, got {k.shape[-2]} and {v.shape[-2]}")
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)
    _check_mask(mask, scores.shape)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        # A fully masked row is softmax over all -inf = NaN; it attends to nothing instead.
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def causal_mask(
    size: int, key_size: int | None = None, device: torch.device | str | None = None, offset: int = 0
) -> Tensor:
    """Bool (size, key_size) mask, True on and below the diagonal: position t sees 0..t only.

    ``key_size`` defaults to ``size``; when it differs the mask is aligned top-left, as
    PyTorch's ``is_causal=True`` is. ``offset`` shifts the diagonal right: query i sees keys
    0..i+offset, the mask of queries that come after ``offset`` cached positions.
    """
    key_size = size if key_size is None else key_size
    return torch.ones(size, key_size, dtype=torch.bool, device=device).tril(offset)


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Turn a (B, T_k) 0/1 or bool attention mask (1 = real token) into a (B, 1, 1, T_k) bool mask."""
    if attention_mask.dim() != 2:
        raise ValueError(f"expected a (batch, seq_len) attention mask, got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """AND together the given bool masks (broadcasting); None entries are ignored."""
    result: Tensor | None = None
    for mask in masks:
        if mask is not None:
            result = mask if result is None else result & mask
    return result


class LayerKVCache:
    """One attention layer's past keys and values, (B, n_heads, max_length, d_head) buffers filled left to right.

    The buffers are allocated once: appending a position is a copy into the next free slot,
    with no reallocation as the sequence grows (``torch.cat`` would copy the whole past each step).
    """

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys = keys  # (B, h, max_length, d_head)
        self.values = values
        self.length = 0  # positions filled so far

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values (B, h, T_new, d_head); return all of them so far, (B, h, length, d_head) views."""
        start, end = self.length, self.length + k.shape[-2]
        if end > self.keys.shape[-2]:
            raise ValueError(
                f"the cache holds {self.keys.shape[-2]} positions and is full; "
                "create a larger one (max_length=) or start a new one"
            )
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Past keys and values of every layer of a decoder: ``layers[i]`` is handed to block ``i``.

    Memory: ``2 * n_layers * batch * max_length * n_heads * d_head`` numbers (keys and values): with
    multi-head attention ``n_heads * d_head = d_model``; grouped-query attention caches only its
    key/value heads (``llmcourse.llama``). ``nbytes`` gives it in bytes.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        d_head: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (batch_size, n_heads, max_length, d_head)
        self.layers = [
            LayerKVCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(n_layers)
        ]
        self.max_length = max_length

    @property
    def length(self) -> int:
        """How many positions are stored (the same in every layer after a full forward pass)."""
        return self.layers[0].length

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value buffers."""
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers)

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (the next update writes over them): rewind to a shared prefix."""
        if not 0 <= length <= self.length:
            raise ValueError(f"can only rewind to 0..{self.length} positions, not {length}")
        for layer in self.layers:
            layer.length = length

    def repeat_prefix(self, batch_size: int, max_length: int) -> KVCache:
        """A new cache of ``batch_size`` rows with room for ``max_length`` positions, every row starting with
        this one-row cache's positions: a prompt read once, then continued in many ways (prompt caching)."""
        first = self.layers[0].keys
        if first.shape[0] != 1:
            raise ValueError(f"repeat_prefix copies a one-row cache, not one of {first.shape[0]} rows")
        if max_length < self.length:
            raise ValueError(f"max_length={max_length} cannot hold the {self.length} cached positions")
        _, n_heads, _, d_head = first.shape
        copy = KVCache(len(self.layers), batch_size, n_heads, d_head, max_length, first.dtype, first.device)
        for mine, theirs in zip(self.layers, copy.layers):
            theirs.keys[:, :, :self.length] = mine.keys[:, :, :self.length]  # broadcast over the rows
            theirs.values[:, :, :self.length] = mine.values[:, :, :self.length]
            theirs.length = self.length
        return copy

    def reorder(self, indices: Tensor) -> None:
        """Keep batch rows ``indices`` (B_new,), in that order: beam search follows its surviving beams."""
        for layer in self.layers:
            layer.keys = layer.keys.index_select(0, indices)
            layer.values = layer.values.index_select(0, indices)


class MultiHeadAttention(nn.Module):
    """Multi-head attention: ``Concat(head_1..head_h) W^O`` with ``head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)``.

    The four projections are ``nn.Linear(d_model, d_model)``; head ``i`` uses features
    ``i*d_head:(i+1)*d_head`` of each, the layout of ``nn.MultiheadAttention`` (and of BERT's and
    Llama's separate query, key and value layers), so weights copy across and LoRA can wrap ``w_q``
    and ``w_v`` on their own.

    Two paths, side by side. The *readable* one (``need_weights=True``) projects with each layer
    (``project_each``) and computes the weights as chapter 2 writes them
    (``scaled_dot_product_attention``). The *fast* one projects training self-attention with one
    packed product (``project_packed``) and attends with PyTorch's fused kernel. Set
    ``pack_projections = False`` to have ``w_q``, ``w_k`` and ``w_v`` called one by one on every
    path (a forward hook on one of them, say, runs only then).
    """

    pack_projections: bool = True

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, d_model) -> (B, n_heads, T, d_head): a view, then move heads before time."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_head).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, n_heads, T, d_head) -> (B, T, d_model): the inverse of split_heads."""
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, self.d_model)

    def project_each(self, query: Tensor, key: Tensor | None = None,
                     value: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Readable path: Q, K, V (B, h, T, d_head) from three projections; self-attention if ``key`` is omitted."""
        key = query if key is None else key
        value = key if value is None else value
        return self.split_heads(self.w_q(query)), self.split_heads(self.w_k(key)), self.split_heads(self.w_v(value))

    def project_packed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fast path for self-attention: one (d, 3d) product instead of three (d, d) ones, and one bias
        gradient instead of three; equal to ``project_each(x)`` up to rounding."""
        weight = torch.cat((self.w_q.weight, self.w_k.weight, self.w_v.weight))  # (3d, d)
        bias = None if self.w_q.bias is None else torch.cat((self.w_q.bias, self.w_k.bias, self.w_v.bias))
        q, k, v = F.linear(x, weight, bias).split(self.d_model, dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def can_pack(self) -> bool:
        """Whether ``project_packed`` computes what the three layers would: plain ``nn.Linear`` layers
        (a wrapper such as LoRA computes more than its weight), biased alike, packing not turned off."""
        projections = (self.w_q, self.w_k, self.w_v)
        return self.pack_projections and all(
            type(p) is nn.Linear and (p.bias is None) == (self.w_q.bias is None) for p in projections)

    @staticmethod
    def _one_mask(mask: Tensor | None, is_causal: bool, t_q: int, t_k: int, past: int,
                  device: torch.device) -> tuple[Tensor | None, bool]:
        """The one mask to apply, and whether PyTorch's ``is_causal`` flag can stand for the causal part.

        The queries are the last ``t_q`` of ``t_k`` positions after ``past`` cached ones. With no
        cache and no other mask the flag is enough (the fused kernel's fast case); one new query
        after a cache sees every key, so it needs no causal mask at all.
        """
        if not is_causal or (past > 0 and t_q == 1):
            return mask, False
        if mask is None and past == 0:
            return None, True
        return combine_masks(mask, causal_mask(t_q, t_k, device, offset=past)), False

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: LayerKVCache | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``query`` (B, T_q, d) to ``key``/``value`` (B, T_k, d); self-attention if omitted.

        ``mask`` broadcasts to (B, n_heads, T_q, T_k), True = may attend; ``is_causal`` adds the
        look-ahead mask. With ``need_weights`` the readable path runs and the per-head weights
        (B, n_heads, T_q, T_k) are returned too; otherwise the fused kernel runs.

        With a ``cache`` the new keys and values are appended to it and the queries attend to
        every stored position: T_k becomes the cache's length, and the queries are taken to be the
        last T_q positions (a causal mask is aligned on the right, query i at position past + i).
        """
        training_self_attention = key is None and value is None and torch.is_grad_enabled()
        if training_self_attention and self.can_pack():
            q, k, v = self.project_packed(query)
        else:
            q, k, v = self.project_each(query, key, value)
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.update(k, v)  # (B, h, past + T_k, d_head)
        mask, causal_flag = self._one_mask(mask, is_causal, q.shape[-2], k.shape[-2], past, q.device)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:  # readable: the weights are computed, so they can be returned
            if causal_flag:
                mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
            out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p)
            return self.w_o(self.merge_heads(out)), weights
        _check_mask(mask, torch.Size((*q.shape[:-1], k.shape[-2])))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal_flag)
        return self.w_o(self.merge_heads(out))  # (B, T_q, d_model)
