"""Pre-training objectives: each one a function ``loss_fn(model, batch) -> loss``.

A batch is a dict of tensors named as in Hugging Face Transformers (``input_ids``, ``labels``,
``attention_mask``...). Labels equal to ``IGNORE_INDEX`` (-100) are left out of every loss, as in
PyTorch's ``cross_entropy`` and in Transformers.

- **Causal LM** (GPT): predict token t+1 from tokens 0..t. ``labels`` are the inputs
  themselves; the one-position shift happens once, inside ``causal_lm_loss``.
- **Reversed LM**: predict token t-1 from tokens t..T-1: reverse each sequence, then causal LM.
- **Masked LM** (BERT): hide 15% of the tokens (``mask_tokens``) and predict them from both sides.
- **Next sentence prediction** (BERT): is segment B the continuation of segment A?

The batches these read are built in ``llmcourse.batches``; ``llmcourse.training.train`` runs any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "LossFn",
    "causal_lm_loss",
    "clm_loss",
    "reverse_sequences",
    "reversed_lm_loss",
    "mask_tokens",
    "masked_lm_loss",
    "mlm_loss",
    "nsp_loss",
    "bert_loss",
]

#: Label value that every loss here skips (padding, unmasked positions).
IGNORE_INDEX = -100

Batch = dict[str, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]


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
