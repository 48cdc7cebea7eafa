"""Six fine-tuning strategies by name, and one of them trained and measured (chapter 4's comparison).

``STRATEGIES`` maps a name to a function that makes a classifier ready to train (``llmcourse.freezing``
and ``llmcourse.adapters``); ``LEARNING_RATES`` gives each its peak learning rate; ``run_strategy``
trains a fresh classifier with ``llmcourse.training.train`` and returns the table's figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from llmcourse.adapters import PromptTuning, apply_lora, apply_prefix_tuning
from llmcourse.classifier import classification_batches, classification_loss, metrics_fn, predict
from llmcourse.device import pick_device, seed_everything
from llmcourse.freezing import count_parameters, ffn_only, full_finetuning, head_only
from llmcourse.objectives import Batch
from llmcourse.profiling import training_memory
from llmcourse.tasks import classification_metrics
from llmcourse.training import History, TrainConfig, train

__all__ = ["STRATEGIES", "LEARNING_RATES", "StrategyRun", "run_strategy"]


#: The strategies by name: each takes a classifier and returns it ready to train (in place for all but
#: prompt tuning, which wraps it).
STRATEGIES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "full": full_finetuning,
    "head only": head_only,
    "FFN only": ffn_only,
    "prompt tuning": lambda model: PromptTuning(model, n_tokens=10),
    "prefix tuning": lambda model: apply_prefix_tuning(model, n_prefix=10),
    "LoRA": lambda model: apply_lora(model, ("query", "value"), r=8, alpha=16),
}

#: A peak learning rate for each strategy, for AdamW with warm-up and cosine decay. Fewer trainable
#: weights starting from scratch (a head, prompts, prefixes, LoRA's B) take larger steps than
#: pretrained weights, which a large step would wreck.
LEARNING_RATES: dict[str, float] = {
    "full": 5e-5,
    "head only": 3e-3,
    "FFN only": 1e-4,
    "prompt tuning": 3e-2,
    "prefix tuning": 1e-2,
    "LoRA": 1e-3,
}


@dataclass
class StrategyRun:
    """What one strategy did: the figures of the comparison table, and its training history."""

    strategy: str
    trainable: int
    total: int
    accuracy: float  # on the test batches
    macro_f1: float
    seconds_per_epoch: float  # training time only (evaluations left out)
    memory_mb: float  # training_memory's total, for one batch
    cuda_peak_mb: float | None  # measured by PyTorch's CUDA allocator (None on other devices)
    history: History
    model: nn.Module  # the trained model, in eval mode

    def row(self) -> dict[str, Any]:
        """The table row: strategy, trainable parameters (and their share), scores, time and memory."""
        return {
            "strategy": self.strategy,
            "trainable": self.trainable,
            "trainable %": 100 * self.trainable / self.total,
            "accuracy": self.accuracy,
            "macro-F1": self.macro_f1,
            "s / epoch": self.seconds_per_epoch,
            "memory MB": self.memory_mb,
        }


def run_strategy(
    strategy: str,
    make_classifier: Callable[[], nn.Module],
    train_encoded: Batch,
    val_batches: Sequence[Batch],
    test_batches: Sequence[Batch],
    config: TrainConfig,
    batch_size: int = 16,
    weights: Tensor | None = None,
    seed: int = 0,
) -> StrategyRun:
    """Build a fresh classifier, apply ``STRATEGIES[strategy]``, train it with ``train`` and score it.

    ``config`` sets the budget (``max_steps``; an epoch is ``len(train_encoded) / batch_size``
    steps) and the learning rate; validation accuracy is recorded at every evaluation.
    """
    if strategy not in STRATEGIES:
        raise KeyError(f"unknown strategy {strategy!r}; choose from {list(STRATEGIES)}")
    seed_everything(seed)
    model = STRATEGIES[strategy](make_classifier())
    device = pick_device(config.device)
    model.to(device)
    loss_fn = classification_loss(weights)
    trainable, total = count_parameters(model)
    first = next(classification_batches(train_encoded, batch_size))
    memory = sum(training_memory(model, first, loss_fn).values()) / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = classification_batches(train_encoded, batch_size, shuffle=True, seed=seed, endless=True)
    history = train(model, loss_fn, batches, val_batches, config, metrics_fn=metrics_fn(val_batches))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    scores = classification_metrics(*predict(model, test_batches))
    steps_per_epoch = math.ceil(len(train_encoded["labels"]) / batch_size)
    per_step = history.training_seconds() / max(1, len(history.step))
    return StrategyRun(strategy, trainable, total, scores["accuracy"], scores["macro_f1"], per_step * steps_per_epoch,
                       memory, peak, history, model.eval())
