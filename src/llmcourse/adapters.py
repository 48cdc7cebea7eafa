"""Parameter-efficient fine-tuning: three ways to adapt a frozen encoder with few new weights.

- **prompt tuning**: ``n`` trainable vectors prepended to the input embeddings (Lester et al., 2021);
- **prefix tuning**: ``n`` trainable keys and values prepended in the attention of every layer
  (Li and Liang, 2021);
- **LoRA**: a trainable low-rank update ``B A`` beside chosen weight matrices (Hu et al., 2022).

They follow PEFT's conventions (the classification head trains too; a soft prompt sits before
the text), so that the tests can check them against PEFT: same trainable-parameter counts and,
with the same weights copied across, the same outputs. (PEFT's prefix tuning also moves the text
to positions ``P, P + 1, ...``; ours leaves positions alone, and the tests pass PEFT's positions
explicitly.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.freezing import HEAD_NAMES, freeze_except, is_head

__all__ = [
    "PromptTuning",
    "PrefixSelfAttention",
    "apply_prefix_tuning",
    "LoRALinear",
    "apply_lora",
    "merge_lora",
    "unmerge_lora",
    "lora_disabled",
]


# ---------------------------------------------------------------------------------------------
# Prompt tuning


class PromptTuning(nn.Module):
    """Prepend ``n_tokens`` trainable vectors (a soft prompt) to the input embeddings of a frozen model.

    The wrapped model must accept ``inputs_embeds`` and have ``get_input_embeddings()``
    (Transformers models and ``EncoderClassifier`` do). Only the prompt and the head train.
    The prompt starts as the embeddings of random vocabulary tokens (Lester et al., 2021).
    As in PEFT, the text's tokens then sit at positions ``n_tokens, n_tokens + 1, ...``.
    """

    def __init__(self, model: nn.Module, n_tokens: int = 20, heads: Sequence[str] = HEAD_NAMES, seed: int = 0) -> None:
        super().__init__()
        if n_tokens < 1:
            raise ValueError("n_tokens must be at least 1")
        self.model = freeze_except(model, lambda name: is_head(name, heads))
        table = model.get_input_embeddings().weight  # (V, D)
        rows = torch.randint(table.shape[0], (n_tokens,), generator=torch.Generator().manual_seed(seed))
        self.prompt = nn.Parameter(table[rows].detach().clone())  # (P, D)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, **kwargs: Any) -> Any:
        batch_size, n = input_ids.shape[0], self.prompt.shape[0]
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, D)
        prompt = self.prompt.to(embeds.dtype).expand(batch_size, -1, -1)  # (B, P, D)
        inputs_embeds = torch.cat([prompt, embeds], dim=1)  # (B, P + T, D)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.cat([attention_mask.new_ones(batch_size, n), attention_mask], dim=1)
        if token_type_ids is not None:
            token_type_ids = torch.cat([token_type_ids.new_zeros(batch_size, n), token_type_ids], dim=1)
            kwargs["token_type_ids"] = token_type_ids
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


# ---------------------------------------------------------------------------------------------
# Prefix tuning


class PrefixSelfAttention(nn.Module):
    """A frozen BERT self-attention whose keys and values get ``n_prefix`` trainable entries first.

    Every query may attend to the prefix as well as to the (unpadded) tokens; the queries
    themselves are unchanged, so the output keeps the input's length. Computes
    ``softmax(q [P_k; K]^T / sqrt(d)) [P_v; V]`` per head with PyTorch's fused attention.
    """

    def __init__(self, attention: nn.Module, n_prefix: int, init_std: float = 0.02) -> None:
        super().__init__()
        for name in ("query", "key", "value", "num_attention_heads", "attention_head_size"):
            if not hasattr(attention, name):
                raise TypeError(f"{type(attention).__name__} has no {name!r}: expected a BERT-style self-attention")
        self.attention = attention
        heads, size = attention.num_attention_heads, attention.attention_head_size
        self.prefix_keys = nn.Parameter(torch.randn(heads, n_prefix, size) * init_std)  # (H, P, d)
        self.prefix_values = nn.Parameter(torch.randn(heads, n_prefix, size) * init_std)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> tuple[Tensor, None]:
        att = self.attention
        batch, length, _ = hidden_states.shape
        heads, size = att.num_attention_heads, att.attention_head_size

        def split_heads(x: Tensor) -> Tensor:
            return x.view(batch, length, heads, size).transpose(1, 2)  # (B, H, T, d)

        q = split_heads(att.query(hidden_states))
        k = torch.cat([self.prefix_keys.to(q.dtype).expand(batch, -1, -1, -1), split_heads(att.key(hidden_states))], dim=2)
        v = torch.cat([self.prefix_values.to(q.dtype).expand(batch, -1, -1, -1), split_heads(att.value(hidden_states))], dim=2)
        mask = _may_attend(attention_mask, batch, length, q.device)  # (B or 1, 1 or H, T, T), True = may attend
        prefix_visible = torch.ones(*mask.shape[:-1], self.prefix_keys.shape[1], dtype=torch.bool, device=mask.device)
        mask = torch.cat([prefix_visible, mask], dim=-1)  # (.., T, P + T)
        dropout = att.dropout.p if self.training and hasattr(att, "dropout") else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, T, d)
        return out.transpose(1, 2).reshape(batch, length, heads * size), None


def _may_attend(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    # Transformers hands the attention layers a 4-D mask already: None (no padding), bool
    # (True = may attend, for SDPA) or additive floats (0 = may attend, very negative = not, eager).
    if mask is None:
        return torch.ones(1, 1, length, length, dtype=torch.bool, device=device)
    if mask.dtype != torch.bool:
        mask = mask == 0
    if mask.dim() != 4:
        raise ValueError(f"expected a 4-D attention mask (B, 1, T, T), got shape {tuple(mask.shape)}")
    return mask.expand(mask.shape[0], mask.shape[1], length, length)


def apply_prefix_tuning(model: nn.Module, n_prefix: int = 10, heads: Sequence[str] = HEAD_NAMES) -> nn.Module:
    """Freeze ``model`` and give every BERT self-attention ``n_prefix`` trainable keys and values.

    Modifies ``model`` in place (and returns it); only the prefixes and the head train.
    """
    freeze_except(model, lambda name: is_head(name, heads))
    targets = [(name, module) for name, module in model.named_modules()
               if all(hasattr(module, a) for a in ("query", "key", "value", "num_attention_heads"))]
    if not targets:
        raise ValueError("no BERT-style self-attention (with query, key, value) found in the model")
    for name, module in targets:
        _replace(model, name, PrefixSelfAttention(module, n_prefix))
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


# ---------------------------------------------------------------------------------------------
# LoRA


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B A dropout(x)``: a frozen ``nn.Linear`` plus a trainable rank-r update.

    ``A`` (r, in) starts random and ``B`` (out, r) at zero, so the wrapped layer starts out
    computing exactly what ``base`` does. ``merge()`` adds ``(alpha / r) B A`` into the base
    weight (no extra cost at inference); ``unmerge()`` takes it out again.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if r < 1:
            raise ValueError(f"the rank r must be at least 1, got {r}")
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / r
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight (and PEFT, A)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # True inside ``lora_disabled``: the layer is its base layer again

    def delta_weight(self) -> Tensor:
        """The update ``(alpha / r) B A``, shaped like the base weight (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)  # (..., out)
        if self.merged or self.disabled:
            return out
        update = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T  # (..., r) then (..., out)
        return out + (update * self.scaling).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight; the layer then costs what a plain ``nn.Linear`` does."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (to train on, or to recover the base model)."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(model: nn.Module, targets: Sequence[str] = ("query", "value"), r: int = 8, alpha: float = 16,
               dropout: float = 0.0, heads: Sequence[str] = HEAD_NAMES) -> nn.Module:
    """Wrap every ``nn.Linear`` whose name ends with one of ``targets`` in a ``LoRALinear``.

    Freezes the rest of ``model`` except the classification head (``heads``), in place, and
    returns it. PEFT's ``LoraConfig(target_modules=targets, r=r, lora_alpha=alpha)`` does the same.
    """
    freeze_except(model, lambda name: is_head(name, heads))
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets and not is_head(name + ".x", heads)]
    if not chosen:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear named {list(targets)} in the model; its linear layers are called {linear}")
    for name, module in chosen:
        _replace(model, name, LoRALinear(module, r, alpha, dropout))
    return model


def _lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [module for module in model.modules() if isinstance(module, LoRALinear)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA update into its base weight (for inference)."""
    for layer in _lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo ``merge_lora``."""
    for layer in _lora_layers(model):
        layer.unmerge()
    return model


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` without its LoRA updates: the frozen base model, with no copy of its weights.

    This is how DPO gets its reference model for free (PEFT's ``disable_adapter()`` does the same).
    Merged layers cannot be switched off: call ``unmerge_lora`` first.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to disable: call apply_lora first")
    if any(layer.merged for layer in layers):
        raise ValueError("some LoRA updates are merged into their base weights: call unmerge_lora(model) first")
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, before):
            layer.disabled = was
