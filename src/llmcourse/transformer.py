"""Transformer building blocks: feed-forward sublayer, encoder and decoder blocks, positions.

The layout follows Vaswani et al. (2017), "Attention Is All You Need": every sublayer
(self-attention, cross-attention, feed-forward) sits inside a residual connection with a
LayerNorm. ``norm_first=True`` (pre-LN, as in GPT-2 and most models since) normalises the
sublayer's input, ``x + f(LN(x))``; ``norm_first=False`` (post-LN, the 2017 paper and BERT)
normalises the sum, ``LN(x + f(x))``. Parameter names and layout match PyTorch's
``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` closely enough that weights
copy across one tensor at a time (see ``tests/test_transformer.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from llmcourse.attention import MultiHeadAttention

__all__ = ["FeedForward", "TransformerBlock", "DecoderBlock", "sinusoidal_positions"]


class FeedForward(nn.Module):
    """Position-wise feed-forward sublayer: ``Linear(d_model, d_ff) -> GELU -> Linear(d_ff, d_model)``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.gelu = nn.GELU()  # exact (erf) GELU, as in BERT and GPT; the 2017 paper used ReLU
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, d_model) -> (B, T, d_model); each position is transformed on its own."""
        return self.fc_out(self.dropout(self.gelu(self.fc_in(x))))  # (B, T, d_ff) inside


class TransformerBlock(nn.Module):
    """Encoder block: self-attention then feed-forward, each with a residual connection and LayerNorm.

    With ``is_causal=True`` (or a causal ``mask``) the same block is a GPT-style decoder block.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        norm_first: bool = True,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, dropout=dropout, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout = nn.Dropout(dropout)  # on each sublayer's output, before it joins the residual

    def _self_attention(self, x: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        return self.dropout(self.attn(x, mask=mask, is_causal=is_causal))

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.ffn(x))

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """(B, T, d_model) -> (B, T, d_model). ``mask``: bool, True = may attend, broadcast to (B, h, T, T)."""
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), mask, is_causal)
            x = x + self._feed_forward(self.norm2(x))
        else:
            x = self.norm1(x + self._self_attention(x, mask, is_causal))
            x = self.norm2(x + self._feed_forward(x))
        return x


class DecoderBlock(nn.Module):
    """Encoder-decoder block: causal self-attention, cross-attention to ``memory``, feed-forward."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        norm_first: bool = True,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, dropout=dropout, bias=bias)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        is_causal: bool = True,
    ) -> Tensor:
        """x (B, T_q, d_model) attends to itself (causally by default) and to memory (B, T_k, d_model).

        ``mask`` broadcasts to (B, h, T_q, T_q), ``memory_mask`` to (B, h, T_q, T_k); True = may attend.
        """
        def self_attention(h: Tensor) -> Tensor:
            return self.dropout(self.self_attn(h, mask=mask, is_causal=is_causal))

        def cross_attention(h: Tensor) -> Tensor:
            # Queries from the decoder, keys and values from the encoder's output.
            return self.dropout(self.cross_attn(h, memory, memory, mask=memory_mask))

        def feed_forward(h: Tensor) -> Tensor:
            return self.dropout(self.ffn(h))

        if self.norm_first:
            x = x + self_attention(self.norm1(x))
            x = x + cross_attention(self.norm2(x))
            x = x + feed_forward(self.norm3(x))
        else:
            x = self.norm1(x + self_attention(x))
            x = self.norm2(x + cross_attention(x))
            x = self.norm3(x + feed_forward(x))
        return x


def sinusoidal_positions(
    length: int,
    d_model: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sinusoidal position encodings (length, d_model) of Vaswani et al. (2017).

    ``PE[pos, 2i] = sin(pos / base^(2i/d_model))`` and ``PE[pos, 2i+1] = cos(pos / base^(2i/d_model))``.
    """
    if d_model % 2 != 0:
        raise ValueError(f"d_model must be even (sine and cosine pairs), got {d_model}")
    position = torch.arange(length, dtype=torch.float64, device=device)[:, None]  # (length, 1)
    even = torch.arange(0, d_model, 2, dtype=torch.float64, device=device)  # (d_model/2,) = 2i
    frequency = torch.exp(-math.log(base) * even / d_model)  # 1 / base^(2i/d_model)
    angle = position * frequency  # (length, d_model/2)
    encoding = torch.empty(length, d_model, dtype=torch.float64, device=device)
    encoding[:, 0::2] = torch.sin(angle)
    encoding[:, 1::2] = torch.cos(angle)
    return encoding.to(dtype)
