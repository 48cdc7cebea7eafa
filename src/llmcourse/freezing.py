"""What trains: which parameters of a classifier get gradients.

Full fine-tuning trains every weight, head-only trains the classification head on a frozen
encoder, FFN-only trains the feed-forward sublayers of every block and the head.
``count_parameters`` says how many train.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["count_parameters", "freeze_except", "HEAD_NAMES", "is_head", "full_finetuning", "head_only", "ffn_only"]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())


def freeze_except(model: nn.Module, trainable: Callable[[str], bool]) -> nn.Module:
    """Set ``requires_grad`` to ``trainable(name)`` for every named parameter; return the model."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable(name))
    return model


HEAD_NAMES = ("classifier", "score")  # what Transformers and PEFT call a classification head


def is_head(name: str, heads: Sequence[str] = HEAD_NAMES) -> bool:
    """Whether parameter ``name`` belongs to a classification head (a module named in ``heads``)."""
    return any(part in heads for part in name.split(".")[:-1])


def full_finetuning(model: nn.Module) -> nn.Module:
    """Every weight trains."""
    return freeze_except(model, lambda name: True)


def head_only(model: nn.Module) -> nn.Module:
    """Only the classification head trains: the encoder is a fixed feature extractor."""
    return freeze_except(model, is_head)


# A BERT block: attention.self (Q, K, V), attention.output (W^O + LayerNorm), then the feed-forward
# sublayer: intermediate.dense (D -> 4D, GELU) and output.dense (4D -> D) with its LayerNorm.
_FFN = re.compile(r"(^|\.)layer\.\d+\.(intermediate|output)\.")


def ffn_only(model: nn.Module) -> nn.Module:
    """Only the feed-forward sublayers of every block (with their LayerNorm) and the head train."""
    return freeze_except(model, lambda name: bool(_FFN.search(name)) or is_head(name))
