"""The training loop of the course: pre-training (chapter 3) and fine-tuning (chapter 4) both use ``train``.

``train(model, loss_fn, train_batches, val_batches, config)`` runs AdamW with a linear warm-up
then cosine decay (``learning_rate_at``), gradient clipping and accumulation, evaluation on
held-out batches (the loss and any other metrics), early stopping, checkpoints, mixed precision
on CUDA, and ``DistributedDataParallel`` when launched by ``torchrun`` (``init_distributed``,
``shard``). An objective is any ``loss_fn(model, batch) -> loss`` (``llmcourse.objectives``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from llmcourse.device import autocast, autocast_dtype, pick_device
from llmcourse.objectives import Batch, LossFn

__all__ = [
    "TrainConfig",
    "History",
    "learning_rate_at",
    "configure_optimizer",
    "evaluate",
    "train",
    "init_distributed",
    "shard",
]

MetricsFn = Callable[[nn.Module], dict[str, float]]


# The training loop


@dataclass
class TrainConfig:
    """Settings of ``train``. The learning rate warms up linearly, then follows a cosine to ``min_learning_rate``."""

    max_steps: int = 1000
    learning_rate: float = 1e-3
    min_learning_rate: float | None = None  # learning_rate / 10 when None
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only (not on biases and LayerNorm gains)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0  # clip the global gradient norm to this
    eval_every: int = 100
    max_seconds: float | None = None  # stop early after this much wall time
    checkpoint_dir: str | Path | None = None  # save the latest state there at every evaluation
    resume: bool = False  # continue from checkpoint_dir's checkpoint when there is one
    device: str | None = None  # pick_device() when None
    progress: bool = True  # a tqdm bar (on the first process only)
    accumulation_steps: int = 1  # micro-batches per optimizer step (their gradients add up)
    monitor: str = "val_loss"  # what early stopping and restore_best watch: "val_loss" or a metric's name
    maximize: bool = False  # True for a metric where higher is better (accuracy, F1)
    patience: int | None = None  # stop after this many evaluations without improvement (None: never)
    restore_best: bool = False  # end with the trainable weights of the best evaluation

    def __post_init__(self) -> None:
        if self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be at least 1, got {self.accumulation_steps}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 evaluation (or None), got {self.patience}")


@dataclass
class History:
    """What happened during training: one entry per step, and one per evaluation."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time at each evaluation
    interval_train_loss: list[float] = field(default_factory=list)  # mean train loss since the last evaluation
    eval_seconds: list[float] = field(default_factory=list)  # time each evaluation took (included in seconds)
    metrics: list[dict[str, float]] = field(default_factory=list)  # metrics_fn's results at each evaluation
    best_step: int | None = None  # the evaluation step with the best monitored value
    stopped_early: bool = False

    def training_seconds(self) -> float:
        """Wall time spent training, up to the last evaluation, without the evaluations themselves."""
        return self.seconds[-1] - sum(self.eval_seconds) if self.seconds else 0.0

    def monitored(self, name: str) -> list[float]:
        """The values of ``"val_loss"``, ``"interval_train_loss"`` or a metric, one per evaluation."""
        if name in ("val_loss", "interval_train_loss"):
            return list(getattr(self, name))
        if self.metrics and name not in self.metrics[0]:
            raise KeyError(f"no metric {name!r}; metrics_fn returned {sorted(self.metrics[0])}")
        return [entry[name] for entry in self.metrics]

    def to_dict(self) -> dict[str, list[Any]]:
        """Plain lists, for JSON."""
        return asdict(self)


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up to the peak, then cosine decay to the minimum."""
    peak = config.learning_rate
    low = peak / 10 if config.min_learning_rate is None else config.min_learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if step >= config.max_steps:
        return low
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)  # 0 -> 1
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - low)


def configure_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings (dim >= 2), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas)


def _to(batch: Batch, device: torch.device) -> Batch:
    return {name: value.to(device, non_blocking=True) for name, value in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], device: torch.device | str | None = None) -> float:
    """Mean loss over ``batches`` (each batch weighs the same), in eval mode, without gradients."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    losses = []
    for batch in batches:
        with autocast(device):
            losses.append(loss_fn(model, _to(batch, device)).item())
    model.train(was_training)
    if not losses:
        raise ValueError("no evaluation batches")
    return sum(losses) / len(losses)


def _forever(batches: Iterable[Batch]) -> Iterator[Batch]:
    # A list is cycled through epoch after epoch; a generator is read until it ends.
    while True:
        produced = False
        for batch in batches:
            produced = True
            yield batch
        if not produced:
            raise ValueError("train_batches ran out: pass a list (it is cycled) or an endless iterator")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


class _Evaluation:
    """Evaluates a model on held-out batches, records it in the history, and remembers the best one.

    ``best_state`` keeps the trainable weights of the best evaluation when ``restore_best`` is set.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], metrics_fn: MetricsFn | None,
                 config: TrainConfig, device: torch.device) -> None:
        self.model, self.loss_fn, self.batches, self.metrics_fn = model, loss_fn, batches, metrics_fn
        self.config, self.device = config, device
        self.trainable = {name for name, p in _unwrap(model).named_parameters() if p.requires_grad}
        self.best_value: float | None = None
        self.best_state: dict[str, Tensor] | None = None

    def __call__(self, history: History, step: int, train_losses: list[float], started: float) -> None:
        """Evaluate after ``step`` steps; ``train_losses`` are the steps' losses since the last evaluation."""
        began = time.perf_counter()
        history.val_step.append(step)
        history.val_loss.append(evaluate(self.model, self.loss_fn, self.batches, self.device))
        history.interval_train_loss.append(sum(train_losses) / len(train_losses) if train_losses else math.nan)
        if self.metrics_fn is not None:
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad(), autocast(self.device):
                history.metrics.append({name: float(value) for name, value in self.metrics_fn(self.model).items()})
            self.model.train(was_training)
        history.eval_seconds.append(time.perf_counter() - began)
        history.seconds.append(time.perf_counter() - started)
        value = history.monitored(self.config.monitor)[-1]
        previous = self.best_value
        if previous is None or (value > previous if self.config.maximize else value < previous):
            self.best_value, history.best_step = value, step
            if self.config.restore_best:
                state = _unwrap(self.model).state_dict()
                self.best_state = {name: t.detach().clone() for name, t in state.items() if name in self.trainable}


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, history: History) -> None:
    state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "history": history.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    if hasattr(_unwrap(model), "save_pretrained"):  # a Transformers or PEFT model: its own format beside
        _unwrap(model).save_pretrained(path.parent)


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device) -> tuple[History, int]:
    state = torch.load(path, map_location=device, weights_only=True)
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return History(**state["history"]), state["step"]


def _optimizer_step(model: nn.Module, loss_fn: LossFn, batches: Iterator[Batch], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, config: TrainConfig, device: torch.device) -> float:
    """One step over ``config.accumulation_steps`` micro-batches; returns the step's (mean) loss."""
    optimizer.zero_grad(set_to_none=True)
    step_loss = 0.0
    for micro in range(config.accumulation_steps):
        batch = _to(next(batches), device)
        # Under DDP, average the gradients across processes once per step, not per micro-batch.
        last = micro == config.accumulation_steps - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with autocast(device):
                # The mean over k micro-batches: their gradients add up to those of one big batch.
                loss = loss_fn(model, batch) / config.accumulation_steps
            scaler.scale(loss).backward()
        step_loss += loss.item()
    if config.grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return step_loss


def train(
    model: nn.Module,
    loss_fn: LossFn,
    train_batches: Iterable[Batch],
    val_batches: Sequence[Batch] | None = None,
    config: TrainConfig | None = None,
    metrics_fn: MetricsFn | None = None,
) -> History:
    """Train ``model`` on ``loss_fn`` and return its ``History``.

    ``train_batches`` is a list (cycled) or an endless iterator; ``val_batches`` a fixed list,
    evaluated before training, every ``eval_every`` steps and at the end. ``metrics_fn(model)``,
    if given, runs at each evaluation (in eval mode, without gradients) and returns named
    numbers such as held-out accuracy; early stopping (``config.patience``) and
    ``config.restore_best`` watch ``config.monitor``. One step is ``config.accumulation_steps``
    micro-batches. Wrap the model in ``DistributedDataParallel`` and give each process its own
    batches to train on several.
    """
    config = config or TrainConfig()
    if (config.patience is not None or config.restore_best) and val_batches is None:
        raise ValueError("early stopping and restore_best need val_batches to evaluate on")
    device = pick_device(config.device)
    model.to(device)
    main_process = not dist.is_initialized() or dist.get_rank() == 0
    optimizer = configure_optimizer(model, config)
    # fp16 needs its gradients scaled to stay representable; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(device) == torch.float16)
    checkpoint = Path(config.checkpoint_dir) / "checkpoint.pt" if config.checkpoint_dir else None
    history, first_step = History(), 0
    if config.resume and checkpoint is not None and checkpoint.is_file():
        history, first_step = _load_checkpoint(checkpoint, model, optimizer, device)
    evaluation = _Evaluation(model, loss_fn, val_batches or [], metrics_fn, config, device)
    since_evaluation: list[float] = []  # training losses since the last evaluation
    started = time.perf_counter()
    if val_batches is not None and first_step == 0:
        evaluation(history, 0, since_evaluation, started)
        if checkpoint is not None and main_process:
            _save_checkpoint(checkpoint, model, optimizer, 0, history)
    without_improvement = 0
    batches = _forever(train_batches)
    model.train()
    bar = tqdm(range(first_step, config.max_steps), desc="training", disable=not (config.progress and main_process),
               initial=first_step, total=config.max_steps)
    for step in bar:
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = _optimizer_step(model, loss_fn, batches, optimizer, scaler, config, device)
        history.step.append(step + 1)
        history.train_loss.append(loss)
        history.learning_rate.append(lr)
        since_evaluation.append(loss)
        done = step + 1 == config.max_steps
        out_of_time = config.max_seconds is not None and time.perf_counter() - started > config.max_seconds
        if val_batches is not None and ((step + 1) % config.eval_every == 0 or done or out_of_time):
            evaluation(history, step + 1, since_evaluation, started)
            since_evaluation.clear()
            if checkpoint is not None and main_process:
                _save_checkpoint(checkpoint, model, optimizer, step + 1, history)
            bar.set_postfix(train=f"{loss:.3f}", val=f"{history.val_loss[-1]:.3f}")
            without_improvement = 0 if history.best_step == step + 1 else without_improvement + 1
            if config.patience is not None and without_improvement >= config.patience and not done:
                history.stopped_early = True
                break
        if out_of_time:
            break
    bar.close()
    if evaluation.best_state is not None:
        _unwrap(model).load_state_dict(evaluation.best_state, strict=False)
    return history


# ---------------------------------------------------------------------------------------------
# Several processes


def init_distributed() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment; return ``(rank, world_size)``.

    Uses NCCL on GPUs and gloo on CPUs. Outside ``torchrun`` it does nothing and returns ``(0, 1)``.
    """
    if "RANK" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shard(batch: Batch, rank: int, world_size: int) -> Batch:
    """The ``rank``-th of ``world_size`` equal, contiguous slices of a batch's rows."""
    rows = next(iter(batch.values())).shape[0]
    if rows % world_size:
        raise ValueError(f"a batch of {rows} rows does not split evenly over {world_size} processes")
    size = rows // world_size
    return {name: value[rank * size : (rank + 1) * size] for name, value in batch.items()}