"""Direct preference optimisation (DPO; Rafailov et al., 2023): learn from pairs of answers, one preferred.

A preference pair is a prompt with a *chosen* and a *rejected* answer. DPO trains the policy
``pi`` (the model being tuned) against a frozen *reference* ``ref`` (the model before tuning) with

    loss = -log sigmoid(beta * [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))])

where ``log pi(answer)`` is the **sum** of the log-probabilities of the answer's tokens given the
prompt. ``beta * (log pi - log ref)`` is the *implicit reward* of an answer: the loss raises the
chosen answer's reward above the rejected one's, and ``beta`` sets how far the policy may drift
from the reference to do so (small beta: far). RLHF reaches for the same optimum with a learned
reward model and reinforcement learning; DPO needs neither.

With LoRA, the reference costs no memory: it is the same model with its LoRA updates switched off
(``adapters.lora_disabled``). ``tests/test_dpo.py`` checks ``dpo_loss`` and ``dpo_objective``
against TRL's ``DPOTrainer`` on the same batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.adapters import lora_disabled
from llmcourse.chat import SMOLLM2_SYSTEM_PROMPT, chat_tokens
from llmcourse.objectives import IGNORE_INDEX, Batch
from llmcourse.sft import pad_batch, sequence_logprobs, shuffled_batches

__all__ = ["PreferencePair", "DPOOutput", "pair_batch", "dpo_batches", "dpo_loss", "policy_and_reference_logprobs",
           "dpo_objective", "PreferenceMetrics", "preference_metrics"]


class PreferencePair(NamedTuple):
    """A prompt (the conversation so far) and two answers, ``chosen`` preferred to ``rejected``."""

    messages: Sequence[Mapping[str, str]]
    chosen: str
    rejected: str


def pair_batch(pairs: Sequence[PreferencePair], tokenizer: Any, pad_id: int,
               default_system: str | None = SMOLLM2_SYSTEM_PROMPT) -> Batch:
    """One right-padded batch of 2B rows: the B chosen conversations, then the B rejected ones.

    Labels mark the answer's tokens (end-of-turn included); one forward pass scores both halves.
    """
    def conversation(pair: PreferencePair, answer: str) -> Any:
        return chat_tokens(tokenizer, [*pair.messages, {"role": "assistant", "content": answer}], default_system)

    return pad_batch([conversation(p, p.chosen) for p in pairs] + [conversation(p, p.rejected) for p in pairs], pad_id)


def dpo_batches(pairs: Sequence[PreferencePair], tokenizer: Any, batch_size: int, pad_id: int, seed: int = 0,
                default_system: str | None = SMOLLM2_SYSTEM_PROMPT) -> Iterator[Batch]:
    """Endless shuffled batches of ``batch_size`` pairs (2 x batch_size rows each) for ``training.train``."""
    for chunk in shuffled_batches(pairs, batch_size, seed):
        yield pair_batch(chunk, tokenizer, pad_id, default_system)


class DPOOutput(NamedTuple):
    """The mean loss over the batch and each pair's implicit rewards ``beta * (log pi - log ref)``."""

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor,
             beta: float = 0.1) -> DPOOutput:
    """The DPO loss from summed log-probabilities of the answers, each (B,), under the policy and the reference."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return DPOOutput(loss, chosen_rewards.detach(), rejected_rewards.detach())


def policy_and_reference_logprobs(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Summed answer log-probabilities of every row of ``batch`` (2B,) under the LoRA model and, without
    gradients, under the same model with its LoRA updates off (the reference)."""
    policy, _ = sequence_logprobs(model(batch["input_ids"]), batch["labels"])
    with torch.no_grad(), lora_disabled(model):
        reference, _ = sequence_logprobs(model(batch["input_ids"]), batch["labels"])
    return policy, reference


def dpo_objective(beta: float = 0.1) -> Any:
    """A ``loss_fn(model, batch)`` for ``training.train``: the DPO loss of a ``pair_batch``."""
    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        policy, reference = policy_and_reference_logprobs(model, batch)
        (pc, pr), (rc, rr) = policy.chunk(2), reference.chunk(2)
        return dpo_loss(pc, pr, rc, rr, beta).loss

    return loss_fn


class PreferenceMetrics(NamedTuple):
    """Held-out preference scores.

    ``accuracy``: how often the chosen answer's implicit reward beats the rejected one's (0 before
    training, when both are 0); ``policy_accuracy``: how often the model itself gives the chosen
    answer the higher log-probability, and ``reference_accuracy`` the same for the reference (the
    model before tuning), both from the same pass; ``margin``: the mean reward
    difference; ``kl``: the mean KL divergence from the policy to the reference, per answer token,
    in nats (how far training moved the model).
    """

    loss: float
    accuracy: float
    policy_accuracy: float
    reference_accuracy: float
    margin: float
    kl: float


@torch.no_grad()
def preference_metrics(model: nn.Module, batches: Iterable[Batch], beta: float = 0.1) -> PreferenceMetrics:
    """``PreferenceMetrics`` of ``model`` (with LoRA layers) over ``batches`` of ``pair_batch``."""
    losses, wins, policy_wins, reference_wins, margins = [], [], [], [], []
    kl_sum, kl_tokens = 0.0, 0
    device = next(model.parameters()).device
    for batch in batches:
        input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        policy_logits = model(input_ids).float()
        with lora_disabled(model):
            reference_logits = model(input_ids).float()
        policy, _ = sequence_logprobs(policy_logits, labels)
        reference, _ = sequence_logprobs(reference_logits, labels)
        (pc, pr), (rc, rr) = policy.chunk(2), reference.chunk(2)
        out = dpo_loss(pc, pr, rc, rr, beta)
        losses.append(out.loss.item() * len(pc))
        wins += (out.chosen_rewards > out.rejected_rewards).tolist()
        policy_wins += (pc > pr).tolist()
        reference_wins += (rc > rr).tolist()
        margins += (out.chosen_rewards - out.rejected_rewards).tolist()
        answer = labels[:, 1:] != IGNORE_INDEX  # (2B, T-1): the positions that predict an answer token
        p_log = F.log_softmax(policy_logits[:, :-1][answer], dim=-1)  # (N, V)
        r_log = F.log_softmax(reference_logits[:, :-1][answer], dim=-1)
        kl_sum += (p_log.exp() * (p_log - r_log)).sum().item()  # KL(pi || ref) of each next-token distribution
        kl_tokens += int(answer.sum())
    n = len(wins)
    if n == 0:
        raise ValueError("no batches to evaluate")
    return PreferenceMetrics(sum(losses) / n, sum(wins) / n, sum(policy_wins) / n, sum(reference_wins) / n,
                             sum(margins) / n, kl_sum / max(kl_tokens, 1))
