"""Transformer building blocks and the two model families built from them.

Blocks: the feed-forward sublayer, encoder and decoder blocks, sinusoidal positions. Models:
``GPT`` (a decoder-only language model, Radford et al. 2018/2019) and ``Encoder`` /
``MLMEncoder`` (a bidirectional encoder with BERT's pre-training heads, Devlin et al. 2019).

The layout follows Vaswani et al. (2017), "Attention Is All You Need": every sublayer
(self-attention, cross-attention, feed-forward) sits inside a residual connection with a
LayerNorm. ``norm_first=True`` (pre-LN, as in GPT-2 and most models since) normalises the
sublayer's input, ``x + f(LN(x))``; ``norm_first=False`` (post-LN, the 2017 paper and BERT)
normalises the sum, ``LN(x + f(x))``. Parameter names and layout match PyTorch's
``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` closely enough that weights
copy across one tensor at a time (see ``tests/test_transformer.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from llmcourse import generation
from llmcourse.attention import KVCache, LayerKVCache, MultiHeadAttention, padding_mask

__all__ = [
    "FeedForward",
    "residual",
    "TransformerBlock",
    "DecoderBlock",
    "sinusoidal_positions",
    "GPTConfig",
    "EncoderConfig",
    "GPT",
    "Encoder",
    "MLMEncoder",
]


class FeedForward(nn.Module):
    """Position-wise feed-forward sublayer: ``Linear(d_model, d_ff) -> GELU -> Linear(d_ff, d_model)``."""

    def __init__(
        self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = True, gelu_approximate: str = "none"
    ) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        # "none": exact (erf) GELU, as in BERT; "tanh": the approximation GPT-2 was trained with.
        # (The 2017 paper used ReLU.)
        self.gelu = nn.GELU(approximate=gelu_approximate)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, d_model) -> (B, T, d_model); each position is transformed on its own."""
        return self.fc_out(self.dropout(self.gelu(self.fc_in(x))))  # (B, T, d_ff) inside


def residual(x: Tensor, sublayer: Callable[[Tensor], Tensor], norm: nn.Module, norm_first: bool) -> Tensor:
    """One sublayer with its residual connection: pre-norm ``x + f(norm(x))`` or post-norm ``norm(x + f(x))``."""
    return x + sublayer(norm(x)) if norm_first else norm(x + sublayer(x))


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
        gelu_approximate: str = "none",
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, dropout=dropout, bias=bias, gelu_approximate=gelu_approximate)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout = nn.Dropout(dropout)  # on each sublayer's output, before it joins the residual

    def _self_attention(self, x: Tensor, mask: Tensor | None, is_causal: bool, cache: LayerKVCache | None) -> Tensor:
        return self.dropout(self.attn(x, mask=mask, is_causal=is_causal, cache=cache))

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.ffn(x))

    def forward(
        self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False, cache: LayerKVCache | None = None
    ) -> Tensor:
        """(B, T, d_model) -> (B, T, d_model). ``mask``: bool, True = may attend, broadcast to (B, h, T, T).

        With a ``cache`` (decoding), x holds only the new positions; their keys and values are
        appended to the cache and attention looks at every cached position.
        """
        x = residual(x, lambda h: self._self_attention(h, mask, is_causal, cache), self.norm1, self.norm_first)
        return residual(x, self._feed_forward, self.norm2, self.norm_first)


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
        x = residual(x, lambda h: self.dropout(self.self_attn(h, mask=mask, is_causal=is_causal)), self.norm1,
                     self.norm_first)
        # Cross-attention: queries from the decoder, keys and values from the encoder's output.
        x = residual(x, lambda h: self.dropout(self.cross_attn(h, memory, memory, mask=memory_mask)), self.norm2,
                     self.norm_first)
        return residual(x, lambda h: self.dropout(self.ffn(h)), self.norm3, self.norm_first)


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


# ---------------------------------------------------------------------------------------------
# Models: GPT (decoder only) and an encoder with BERT's heads


@dataclass
class GPTConfig:
    """Sizes of a GPT. The defaults are small enough to train on a laptop CPU."""

    vocab_size: int = 128
    block_size: int = 128  # the longest context: one learned position embedding per position
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    d_ff: int | None = None  # 4 * d_model when None
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    gelu_approximate: str = "none"  # "tanh" to run GPT-2's weights exactly
    tie_weights: bool = True  # the output layer reuses the token embedding matrix


@dataclass
class EncoderConfig(GPTConfig):
    """Sizes of an encoder: a GPT's, plus segment (sentence A / B) embeddings as in BERT."""

    n_segments: int = 2


def _blocks(config: GPTConfig) -> nn.ModuleList:
    return nn.ModuleList(
        TransformerBlock(
            config.d_model, config.n_heads, config.d_ff, config.dropout, norm_first=True,
            layer_norm_eps=config.layer_norm_eps, bias=config.bias, gelu_approximate=config.gelu_approximate,
        )
        for _ in range(config.n_layers)
    )


def _init_weights(model: nn.Module, blocks: nn.ModuleList) -> None:
    # GPT-2's initialisation: N(0, 0.02) for every matrix and embedding, zero biases, and the two
    # projections that write into the residual stream scaled by 1/sqrt(2 * n_layers), so the
    # stream's variance does not grow with depth.
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for block in blocks:
        for projection in (block.attn.w_o, block.ffn.fc_out):
            nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * len(blocks)))


# Heads with at least this many weights are read through a transposed copy when decoding on a CPU.
_TRANSPOSED_HEAD_MIN = 1 << 20

_Model = TypeVar("_Model", bound="_Checkpointable")


class _Checkpointable(nn.Module):
    """``save_pretrained(folder)`` / ``from_pretrained(folder)``: config.json + model.pt, as Transformers does."""

    config_class: ClassVar[type[GPTConfig]] = GPTConfig
    config: GPTConfig

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.pt`` (the state dict) into ``folder``; return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"model": type(self).__name__, **asdict(self.config)}, indent=2))
        torch.save(self.state_dict(), folder / "model.pt")
        return folder

    @classmethod
    def from_pretrained(cls: type[_Model], folder: str | Path, map_location: str | torch.device = "cpu") -> _Model:
        """Rebuild a model saved by ``save_pretrained``."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no config.json; save a model there with model.save_pretrained(folder)")
        settings = json.loads((folder / "config.json").read_text())
        saved_as = settings.pop("model")
        if saved_as != cls.__name__:
            raise ValueError(f"{folder} holds a {saved_as}, not a {cls.__name__}; load it with {saved_as}.from_pretrained")
        model = cls(cls.config_class(**settings))
        model.load_state_dict(torch.load(folder / "model.pt", map_location=map_location, weights_only=True))
        return model

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Count parameters (a tied matrix once); ``non_embedding`` leaves out the embeddings, as Kaplan et al. do."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return total


class GPT(_Checkpointable):
    """Decoder-only language model: token + position embeddings, causal pre-LN blocks, final LayerNorm, LM head.

    ``forward(input_ids)`` returns next-token logits; the loss lives in ``llmcourse.objectives``.
    With a ``KVCache`` from ``new_cache`` the forward pass takes only the new tokens and reuses
    the keys and values of the earlier ones (``llmcourse.generation`` decodes that way).
    """

    config_class = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.block_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = _blocks(config)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            # Weight tying (Press & Wolf, 2017): one matrix maps ids to vectors and vectors to scores.
            self.lm_head.weight = self.token_embedding.weight
        _init_weights(self, self.blocks)
        self._head_t: Tensor | None = None  # set inside decoding(): not a parameter, not in the state dict

    def forward(self, input_ids: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits; position t sees tokens 0..t only.

        With a ``cache`` holding P earlier positions, ``input_ids`` are the next T tokens (positions
        P..P+T-1) and the logits are theirs. ``last_only`` scores the last position only,
        (B, 1, vocab_size): all that decoding needs, and the output layer is the costliest one.
        """
        past = 0 if cache is None else cache.length
        length = past + input_ids.shape[1]
        if length > self.config.block_size:
            raise ValueError(f"sequence of length {length} is longer than block_size={self.config.block_size}")
        positions = torch.arange(past, length, device=input_ids.device)  # (T,)
        x = self.dropout(self.token_embedding(input_ids) + self.position_embedding(positions))  # (B, T, d)
        if cache is None:
            for block in self.blocks:
                x = block(x, is_causal=True)
        else:
            for block, layer_cache in zip(self.blocks, cache.layers):
                x = block(x, is_causal=True, cache=layer_cache)
        if last_only:
            x = x[:, -1:]  # (B, 1, d)
            if self._head_t is not None and not torch.is_grad_enabled():
                return self.norm(x) @ self._head_t  # (B, 1, vocab_size), the fast path of decoding()
        return self.lm_head(self.norm(x))  # (B, T, vocab_size)

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        """While decoding without gradients on a CPU, score the last position through a (d, vocab) copy of the head.

        Decoding scores one position per row against the whole vocabulary: a matrix-vector product
        whose (vocab, d) weight no longer fits in the cache. BLAS reads ``nn.Linear``'s (vocab, d)
        layout about 3x slower there than a (d, vocab) copy (GPT-2's vocabulary, d 384, one thread:
        11 ms vs 3.8 ms, benchmarks/README.md), and this product was most of the time per token.
        ``llmcourse.generation`` decodes inside this context; the copy is made on entering it and
        dropped on leaving, so the weights must not change in between (decoding does not change
        them). Small heads (the course's own models), other devices and wrapped heads keep ``nn.Linear``.
        """
        head = self.lm_head
        fast = (not torch.is_grad_enabled() and head.weight.device.type == "cpu" and type(head) is nn.Linear
                and head.bias is None and head.weight.numel() >= _TRANSPOSED_HEAD_MIN)
        previous = self._head_t
        self._head_t = head.weight.detach().t().contiguous() if fast else None
        try:
            yield
        finally:
            self._head_t = previous

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """An empty key/value cache for ``batch_size`` sequences of up to ``max_length`` (default block_size) tokens."""
        config = self.config
        max_length = config.block_size if max_length is None else min(max_length, config.block_size)
        weight = self.token_embedding.weight
        return KVCache(config.n_layers, batch_size, config.n_heads, config.d_model // config.n_heads, max_length,
                       dtype=weight.dtype, device=weight.device)

    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Tensor:
        """Append up to ``max_new_tokens`` tokens to (B, T) ``input_ids``; temperature 0 is greedy.

        A shortcut for ``llmcourse.generation.generate(self, ...)``, which lists the other
        ``options`` (top_p, repetition_penalty, stop tokens and strings, use_cache).
        """
        return generation.generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                        generator=generator, **options)

    @classmethod
    def from_hf_gpt2(cls, source: nn.Module | Mapping[str, Tensor], n_heads: int | None = None) -> GPT:
        """A GPT holding Hugging Face GPT-2 weights (a ``GPT2LMHeadModel`` or its state dict); same logits.

        The conversion itself is ``llmcourse.converters.gpt_from_hf_gpt2``.
        """
        from llmcourse.converters import gpt_from_hf_gpt2

        return gpt_from_hf_gpt2(source, n_heads)


class Encoder(_Checkpointable):
    """Bidirectional encoder: token + position + segment embeddings, pre-LN blocks, final LayerNorm.

    Every position sees every real (non-padding) position, in both directions.
    """

    config_class = EncoderConfig

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.block_size, config.d_model)
        self.segment_embedding = nn.Embedding(config.n_segments, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = _blocks(config)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        _init_weights(self, self.blocks)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, segment_ids: Tensor | None = None) -> Tensor:
        """(B, T) ids, optional (B, T) attention mask (1 = real token) and segment ids -> (B, T, d_model)."""
        length = input_ids.shape[1]
        if length > self.config.block_size:
            raise ValueError(f"sequence of length {length} is longer than block_size={self.config.block_size}")
        x = self.token_embedding(input_ids) + self.position_embedding(torch.arange(length, device=input_ids.device))
        if segment_ids is not None:
            x = x + self.segment_embedding(segment_ids)
        x = self.dropout(x)  # (B, T, d)
        mask = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, T): keys only
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.norm(x)


class MLMEncoder(_Checkpointable):
    """An ``Encoder`` with BERT's two pre-training heads.

    The masked-LM head scores the vocabulary at every position (its output matrix tied to the
    token embedding); the next-sentence head reads the first position (the ``[CLS]`` token).
    ``forward`` returns ``(mlm_logits (B, T, vocab_size), nsp_logits (B, 2))``.
    """

    config_class = EncoderConfig

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        d_model = config.d_model
        self.mlm_transform = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        )
        self.mlm_head = nn.Linear(d_model, config.vocab_size)
        if config.tie_weights:
            self.mlm_head.weight = self.encoder.token_embedding.weight
        self.nsp_head = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, 2))
        _init_weights(self, self.encoder.blocks)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        mlm_positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(B, T) ids -> masked-LM logits (B, T, vocab_size) and next-sentence logits (B, 2).

        With ``mlm_positions``, a (B, T) bool mask, the vocabulary is scored only there and the
        masked-LM logits are (N, vocab_size), N = ``mlm_positions.sum()``: BERT's saving, since
        only the ~15% masked positions enter the loss.
        """
        hidden = self.encoder(input_ids, attention_mask, segment_ids)  # (B, T, d)
        selected = hidden if mlm_positions is None else hidden[mlm_positions]  # (B, T, d) or (N, d)
        return self.mlm_head(self.mlm_transform(selected)), self.nsp_head(hidden[:, 0])
