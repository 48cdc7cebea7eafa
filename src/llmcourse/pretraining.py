"""Pre-training: the four objectives, the batches they read, and one training loop.

An objective is a function ``loss_fn(model, batch) -> loss``; a batch is a dict of tensors
named as in Hugging Face Transformers (``input_ids``, ``labels``, ``attention_mask``...).
Labels equal to ``IGNORE_INDEX`` (-100) are left out of every loss, as in PyTorch's
``cross_entropy`` and in Transformers.

- **Causal LM** (GPT): predict token t+1 from tokens 0..t. ``labels`` are the inputs
  themselves; the one-position shift happens once, inside ``causal_lm_loss``.
- **Reversed LM**: predict token t-1 from tokens t..T-1: reverse each sequence, then causal LM.
- **Masked LM** (BERT): hide 15% of the tokens (``mask_tokens``) and predict them from both sides.
- **Next sentence prediction** (BERT): is segment B the continuation of segment A?

``train`` runs any of them, and the fine-tuning of chapter 4: AdamW, linear warm-up then
cosine decay, gradient clipping and accumulation, evaluation on held-out data (the loss and any
other metrics), early stopping, checkpoints, mixed precision on CUDA, and
``DistributedDataParallel`` when launched by ``torchrun``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from llmcourse.data import Play, speeches
from llmcourse.device import autocast, autocast_dtype, pick_device

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "causal_lm_loss",
    "clm_loss",
    "reverse_sequences",
    "reversed_lm_loss",
    "mask_tokens",
    "masked_lm_loss",
    "mlm_loss",
    "nsp_loss",
    "bert_loss",
    "SpecialTokens",
    "add_special_tokens",
    "SentencePair",
    "nsp_pairs",
    "encode_pair",
    "pair_batches",
    "lm_batches",
    "lm_eval_batches",
    "TrainConfig",
    "History",
    "learning_rate_at",
    "configure_optimizer",
    "evaluate",
    "train",
    "init_distributed",
    "shard",
]

#: Label value that every loss here skips (padding, unmasked positions).
IGNORE_INDEX = -100

Batch = dict[str, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]
MetricsFn = Callable[[nn.Module], dict[str, float]]


# ---------------------------------------------------------------------------------------------
# Causal and reversed language modelling


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of predicting ``labels[:, t + 1]`` from ``logits[:, t]``.

    ``logits`` (B, T, V) and ``labels`` (B, T) are aligned with the inputs (``labels`` is usually
    ``input_ids`` with padding set to -100), so the shift happens here and only here. The last
    position has nothing to predict and the first label is never a target.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must have the inputs' shape {tuple(logits.shape[:2])}: "
            "pass labels=input_ids (padding set to -100), not a pre-shifted copy"
        )
    predictions = logits[:, :-1]  # (B, T-1, V): positions 0..T-2 predict
    targets = labels[:, 1:]  # (B, T-1): tokens 1..T-1 are predicted
    return F.cross_entropy(predictions.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def clm_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Causal LM objective: ``batch["input_ids"]`` (B, T), optional ``labels`` (default: the inputs)."""
    input_ids = batch["input_ids"]
    return causal_lm_loss(model(input_ids), batch.get("labels", input_ids))


def reverse_sequences(input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Reverse each row's real tokens; right padding (``attention_mask`` 0) stays on the right."""
    length = input_ids.shape[1]
    positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)  # (B, T)
    if attention_mask is None:
        return input_ids.flip(1)
    real = attention_mask.sum(dim=1, keepdim=True)  # (B, 1)
    source = torch.where(positions < real, real - 1 - positions, positions)  # t <- L-1-t inside the text
    return input_ids.gather(1, source)


def reversed_lm_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Reversed LM: predict each token from the ones *after* it, i.e. causal LM on the reversed text."""
    mask = batch.get("attention_mask")
    reversed_ids = reverse_sequences(batch["input_ids"], mask)
    labels = reverse_sequences(batch["labels"], mask) if "labels" in batch else reversed_ids
    return clm_loss(model, {"input_ids": reversed_ids, "labels": labels})


# ---------------------------------------------------------------------------------------------
# Masked language modelling and next sentence prediction


def mask_tokens(
    input_ids: Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking rule: return ``(inputs, labels)`` for masked language modelling.

    Each token that is not special is selected with probability ``mask_prob``. Of the selected
    tokens 80% become ``mask_id``, 10% a random non-special token and 10% stay as they are; the
    model must predict all of them. ``labels`` hold the original ids there and -100 elsewhere.
    """
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype)
    is_special = torch.isin(input_ids, special.to(input_ids.device))
    probability = torch.full(input_ids.shape, mask_prob).masked_fill(is_special.cpu(), 0.0)
    selected = torch.bernoulli(probability, generator=generator).bool().to(input_ids.device)
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)

    action = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)  # one draw decides 80/10/10
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    every_id = torch.arange(vocab_size, device=input_ids.device)
    ordinary = every_id[~torch.isin(every_id, special.to(input_ids.device))]
    random_ids = ordinary[torch.randint(len(ordinary), input_ids.shape, generator=generator).to(input_ids.device)]

    inputs = input_ids.masked_fill(to_mask, mask_id)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean of ``-log p(original token)`` over the selected positions (labels != -100); no shift."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def _encoder_outputs(model: nn.Module, batch: Batch, mlm_positions: Tensor) -> tuple[Tensor, Tensor]:
    # Score the vocabulary only where the loss needs it (the selected positions), as BERT does.
    return model(batch["input_ids"], batch.get("attention_mask"), batch.get("segment_ids"), mlm_positions=mlm_positions)


def mlm_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Masked LM objective for an ``MLMEncoder``: batch from ``mask_tokens`` (``input_ids``, ``labels``)."""
    selected = batch["labels"] != IGNORE_INDEX  # (B, T)
    mlm_logits, _ = _encoder_outputs(model, batch, selected)  # (N, V)
    return masked_lm_loss(mlm_logits, batch["labels"][selected])


def nsp_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Next-sentence objective: cross-entropy of ``batch["next_sentence_label"]`` (1 = B follows A)."""
    _, nsp_logits = _encoder_outputs(model, batch, torch.zeros_like(batch["input_ids"], dtype=torch.bool))
    return F.cross_entropy(nsp_logits, batch["next_sentence_label"])


def bert_loss(model: nn.Module, batch: Batch) -> Tensor:
    """BERT's pre-training loss: masked LM + next sentence prediction, from one forward pass."""
    selected = batch["labels"] != IGNORE_INDEX
    mlm_logits, nsp_logits = _encoder_outputs(model, batch, selected)
    return masked_lm_loss(mlm_logits, batch["labels"][selected]) + F.cross_entropy(nsp_logits, batch["next_sentence_label"])


class SpecialTokens(NamedTuple):
    """Ids of the tokens that are not words: never masked, never a masked-LM target."""

    pad: int
    cls: int
    sep: int
    mask: int
    unk: int  # guessing "some rare word" teaches nothing, so <unk> is never a target either


def add_special_tokens(tokenizer: Any) -> SpecialTokens:
    """Append ``[PAD] [CLS] [SEP] [MASK]`` to a tokenizer with ``itos`` / ``stoi`` and ``<unk>`` at 0; idempotent."""
    for token in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"):
        if token not in tokenizer.stoi:
            tokenizer.stoi[token] = len(tokenizer.itos)
            tokenizer.itos.append(token)
    return SpecialTokens(*(tokenizer.stoi[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "<unk>")))


@dataclass(frozen=True)
class SentencePair:
    """Two lines for next sentence prediction; ``is_next`` when ``second`` follows ``first`` in ``play``."""

    first: str
    second: str
    is_next: bool
    play: str  # where the first line comes from
    second_play: str  # where the second line comes from (another play when not is_next)


def nsp_pairs(selection: Sequence[Play], n_pairs: int | None = None, seed: int = 0) -> list[SentencePair]:
    """Line pairs from the given plays: half consecutive lines of one play (positives), half a line
    followed by a random line of a *different* play (negatives), each chosen with probability 1/2.

    Pass the plays of one split only, so that no pair mixes training and held-out plays.
    """
    if len(selection) < 2:
        raise ValueError("negatives come from another play: give at least two plays")
    rng = random.Random(seed)
    lines = {play.slug: [line for speech in speeches(play) for line in speech.lines] for play in selection}
    slugs = sorted(lines)
    starts = [(slug, i) for slug in slugs for i in range(len(lines[slug]) - 1)]
    rng.shuffle(starts)
    pairs = []
    for slug, i in starts[:n_pairs]:
        if rng.random() < 0.5:
            pairs.append(SentencePair(lines[slug][i], lines[slug][i + 1], True, slug, slug))
        else:
            other = rng.choice([s for s in slugs if s != slug])
            pairs.append(SentencePair(lines[slug][i], rng.choice(lines[other]), False, slug, other))
    return pairs


def encode_pair(first: Sequence[int], second: Sequence[int], special: SpecialTokens, max_length: int) -> tuple[list[int], list[int]]:
    """``[CLS] A [SEP] B [SEP]`` and its segment ids (0 for A, 1 for B), trimming the longer side to fit."""
    first, second = list(first), list(second)
    while len(first) + len(second) > max_length - 3:
        (first if len(first) >= len(second) else second).pop()
    ids = [special.cls, *first, special.sep, *second, special.sep]
    return ids, [0] * (len(first) + 2) + [1] * (len(second) + 1)


def pair_batches(
    examples: Sequence[tuple[list[int], list[int], int]],
    batch_size: int,
    special: SpecialTokens,
    vocab_size: int,
    seed: int = 0,
    endless: bool = True,
    mask_prob: float = 0.15,
) -> Iterator[Batch]:
    """Batches for BERT-style pre-training from ``(ids, segment_ids, is_next)`` examples.

    Each batch is padded on the right and masked afresh (dynamic masking, as RoBERTa does):
    ``input_ids``, ``labels``, ``attention_mask``, ``segment_ids``, ``next_sentence_label``.
    ``endless`` draws random batches forever; otherwise one pass in order (for evaluation,
    the same masks every time for a given seed).
    """
    generator = torch.Generator().manual_seed(seed)
    specials = tuple(special)
    while True:
        if endless:
            order = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
            chunks: Iterable[list[int]] = [order]
        else:
            chunks = (list(range(i, min(i + batch_size, len(examples)))) for i in range(0, len(examples), batch_size))
        for chunk in chunks:
            rows = [examples[i] for i in chunk]
            width = max(len(ids) for ids, _, _ in rows)
            input_ids = torch.full((len(rows), width), special.pad)
            segment_ids = torch.zeros((len(rows), width), dtype=torch.long)
            for row, (ids, segments, _) in enumerate(rows):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                segment_ids[row, : len(ids)] = torch.tensor(segments)
            masked, labels = mask_tokens(input_ids, special.mask, vocab_size, specials, mask_prob, generator)
            yield {
                "input_ids": masked,
                "labels": labels,
                "attention_mask": (input_ids != special.pad).long(),
                "segment_ids": segment_ids,
                "next_sentence_label": torch.tensor([is_next for _, _, is_next in rows]),
            }
        if not endless:
            return


# ---------------------------------------------------------------------------------------------
# Language-model batches from a token stream


def lm_batches(ids: Tensor, batch_size: int, block_size: int, seed: int = 0) -> Iterator[Batch]:
    """Endless batches of random windows of ``block_size`` tokens from a 1-D tensor of ids."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(block_size)
    while True:
        starts = torch.randint(len(ids) - block_size + 1, (batch_size, 1), generator=generator)
        yield {"input_ids": ids[starts + offsets]}  # (B, T)


def lm_eval_batches(ids: Tensor, batch_size: int, block_size: int, n_batches: int) -> list[Batch]:
    """A fixed list of batches of evenly spaced windows, spanning the whole of ``ids``."""
    starts = torch.linspace(0, len(ids) - block_size, n_batches * batch_size).long()[:, None]
    windows = ids[starts + torch.arange(block_size)]  # (n_batches * B, T)
    return [{"input_ids": chunk} for chunk in windows.split(batch_size)]


# ---------------------------------------------------------------------------------------------
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
    history, first_step = History(), 0
    checkpoint = Path(config.checkpoint_dir) / "checkpoint.pt" if config.checkpoint_dir else None
    if config.resume and checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, first_step = History(**state["history"]), state["step"]

    trainable = {name for name, p in _unwrap(model).named_parameters() if p.requires_grad}
    best: dict[str, Any] = {"value": None, "state": None}
    interval: list[float] = []  # training losses since the last evaluation

    def improved(value: float) -> bool:
        previous = best["value"]
        return previous is None or (value > previous if config.maximize else value < previous)

    def evaluate_and_save(step: int) -> None:
        began = time.perf_counter()
        history.val_step.append(step)
        history.val_loss.append(evaluate(model, loss_fn, val_batches or [], device))
        history.interval_train_loss.append(sum(interval) / len(interval) if interval else math.nan)
        interval.clear()
        if metrics_fn is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad(), autocast(device):
                history.metrics.append({name: float(value) for name, value in metrics_fn(model).items()})
            model.train(was_training)
        history.eval_seconds.append(time.perf_counter() - began)
        history.seconds.append(time.perf_counter() - start)
        value = history.monitored(config.monitor)[-1]
        if improved(value):
            best["value"], history.best_step = value, step
            if config.restore_best:
                best["state"] = {name: t.detach().clone() for name, t in _unwrap(model).state_dict().items() if name in trainable}
        if checkpoint is not None and main_process:
            state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "history": history.to_dict()}
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, checkpoint)
            if hasattr(_unwrap(model), "save_pretrained"):
                _unwrap(model).save_pretrained(checkpoint.parent)

    start = time.perf_counter()
    if val_batches is not None and first_step == 0:
        evaluate_and_save(0)
    evaluations_without_improvement = 0
    batches = _forever(train_batches)
    model.train()
    bar = tqdm(range(first_step, config.max_steps), desc="training", disable=not (config.progress and main_process),
               initial=first_step, total=config.max_steps)
    for step in bar:
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(config.accumulation_steps):
            batch = _to(next(batches), device)
            # Under DDP, average the gradients across processes once per step, not per micro-batch.
            last = micro == config.accumulation_steps - 1
            with (contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()):
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
        history.step.append(step + 1)
        history.train_loss.append(step_loss)
        interval.append(step_loss)
        history.learning_rate.append(lr)
        done = step + 1 == config.max_steps
        out_of_time = config.max_seconds is not None and time.perf_counter() - start > config.max_seconds
        if val_batches is not None and ((step + 1) % config.eval_every == 0 or done or out_of_time):
            evaluate_and_save(step + 1)
            bar.set_postfix(train=f"{history.train_loss[-1]:.3f}", val=f"{history.val_loss[-1]:.3f}")
            evaluations_without_improvement = 0 if history.best_step == step + 1 else evaluations_without_improvement + 1
            if config.patience is not None and evaluations_without_improvement >= config.patience and not done:
                history.stopped_early = True
                break
        if out_of_time:
            break
    bar.close()
    if config.restore_best and best["state"] is not None:
        _unwrap(model).load_state_dict(best["state"], strict=False)
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
