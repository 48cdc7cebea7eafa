"""Supervised fine-tuning (SFT): teach a pretrained decoder to answer, from example conversations.

Instruction tuning is next-token prediction on conversations written in the model's chat template,
with one change: the loss counts only the tokens the assistant writes (``chat.chat_tokens`` gives
every other token the label -100). The model is not asked to predict the user's question, which it
will always be given, and it does learn the end-of-turn token that ends its answer.

- ``pad_batch``: conversations of different lengths in one (B, T) batch, padded on the right;
- ``sft_loss``: the causal LM loss on that batch (the shift by one happens in
  ``objectives.causal_lm_loss``);
- ``sft_batches``: shuffled batches for ``training.train``, the same loop as pre-training;
- ``add_lora``: LoRA (``adapters.LoRALinear``) on chosen projections of a decoder, the rest frozen;
- ``answer_logprobs`` and ``choose_answers``: score each possible answer of a question by its
  log-probability as the assistant's turn, the way evaluation harnesses score multiple choice.

Why right padding needs no attention mask here: in a causal decoder a token attends only to the
tokens before it, so padding placed after the last real token is never seen by a real token; its
own outputs are garbage, and its labels are -100, so they never reach the loss. (Left padding, as
batched generation uses, would need a mask: ``pad_batch`` pads on the right only.)
``tests/test_sft.py`` checks the loss against TRL's ``SFTTrainer`` with PEFT on the same batch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.adapters import apply_lora
from llmcourse.chat import SMOLLM2_SYSTEM_PROMPT, ChatTokens, chat_tokens
from llmcourse.objectives import IGNORE_INDEX, Batch, causal_lm_loss

_T = TypeVar("_T")

__all__ = ["LLAMA_ATTENTION", "LLAMA_ALL_LINEAR", "pad_batch", "sft_loss", "shuffled_batches", "sft_batches", "add_lora",
           "sequence_logprobs", "answer_logprobs", "choose_answers"]

#: LoRA targets: the query and value projections (the LoRA paper's choice), or every linear layer.
LLAMA_ATTENTION = ("q_proj", "v_proj")
LLAMA_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pad_batch(examples: Sequence[ChatTokens], pad_id: int) -> Batch:
    """Right-pad ``examples`` into ``input_ids``, ``labels`` (-100 on padding) and ``attention_mask``, each (B, T)."""
    if not examples:
        raise ValueError("pad_batch needs at least one example")
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        if len(example.input_ids) != len(example.labels):
            raise ValueError(f"example {row} has {len(example.input_ids)} tokens but {len(example.labels)} labels")
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _check_right_padded(attention_mask: Tensor) -> None:
    # Right padding: each row is ones then zeros, so the mask never increases along a row.
    if (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
        raise ValueError("the batch is padded on the left (or has holes): this decoder takes no attention mask, "
                         "so real tokens would attend to padding; pad on the right (pad_batch does)")


def sft_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean cross-entropy over the labelled tokens (the assistant's) of a right-padded batch."""
    if "attention_mask" in batch:
        _check_right_padded(batch["attention_mask"])
    return causal_lm_loss(model(batch["input_ids"]), batch["labels"])


def shuffled_batches(items: Sequence[_T], batch_size: int, seed: int = 0) -> Iterator[list[_T]]:
    """Endless lists of ``batch_size`` items, reshuffled at every pass over them (a last short list is dropped)."""
    if len(items) < batch_size:
        raise ValueError(f"{len(items)} examples cannot fill a batch of {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(items)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [items[i] for i in order[start:start + batch_size]]


def sft_batches(examples: Sequence[ChatTokens], batch_size: int, pad_id: int, seed: int = 0) -> Iterator[Batch]:
    """Endless padded batches of ``batch_size`` examples for ``training.train``."""
    for chunk in shuffled_batches(examples, batch_size, seed):
        yield pad_batch(chunk, pad_id)


def add_lora(model: nn.Module, targets: Sequence[str] = LLAMA_ATTENTION, r: int = 8, alpha: float = 16,
             dropout: float = 0.0) -> nn.Module:
    """Freeze ``model`` and put a rank-``r`` LoRA update on every linear layer named in ``targets``.

    The same as PEFT's ``LoraConfig(r=r, lora_alpha=alpha, target_modules=targets)`` on a causal LM:
    only the LoRA matrices train (a decoder has no classification head).
    """
    return apply_lora(model, targets, r, alpha, dropout, heads=())


def sequence_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-probabilities of the labelled tokens of each sequence, and how many there are.

    ``logits`` (B, T, V) and ``labels`` (B, T) aligned with the inputs, as ``causal_lm_loss`` takes
    them: position t predicts label t + 1. Returns two (B,) tensors; the sums keep their gradient.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the inputs' shape {tuple(logits.shape[:2])}")
    targets = labels[:, 1:]  # (B, T-1)
    picked = targets != IGNORE_INDEX
    rows = picked.nonzero()[:, 0]  # the sequence of each labelled token
    # Normalise only where a token is scored: the other positions' distributions are never needed.
    logprobs = F.log_softmax(logits[:, :-1][picked].float(), dim=-1)  # (N, V)
    token_logprobs = logprobs.gather(-1, targets[picked].unsqueeze(-1)).squeeze(-1)  # (N,)
    totals = torch.zeros(labels.shape[0], dtype=token_logprobs.dtype, device=logits.device)
    return totals.index_add(0, rows, token_logprobs), picked.sum(dim=1)


def _last_turn_start(labels: Sequence[int]) -> int:
    """Where the last run of labelled tokens (the final assistant turn) begins."""
    start = len(labels)
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


@torch.no_grad()
def answer_logprobs(
    model: nn.Module, tokenizer: Any, questions: Sequence[Sequence[Mapping[str, str]]], answers: Sequence[str],
    default_system: str | None = SMOLLM2_SYSTEM_PROMPT, batch_size: int = 32, share_prefix: bool = False,
) -> tuple[Tensor, Tensor]:
    """Log-probability of each of ``answers`` as the assistant's reply to each conversation in ``questions``.

    Returns ``(logprobs, lengths)``, each (len(questions), len(answers)): the sum over the answer's
    tokens, its end-of-turn token included (so an answer that should go on is penalised for
    stopping), and how many tokens that is (divide for a length-normalised score).

    Each prompt is read once: questions whose prompts have the same length are batched (up to
    ``batch_size``), their keys and values cached, and every answer continues from that cache
    (``KVCache.truncate`` rewinds it between answers), about half the work of scoring each
    prompt-and-answer row from scratch. ``model`` needs ``new_cache`` (``LlamaDecoder`` has it).

    With ``share_prefix`` the tokens that every prompt begins with (a few-shot prompt's examples, say)
    are read once, and each batch starts from a copy of their cache (``KVCache.repeat_prefix``): the
    same scores up to rounding, for the cost of the questions alone.
    """
    prompts: list[list[int]] = []
    answer_ids: list[list[int]] = []
    for question in questions:
        rows = [chat_tokens(tokenizer, [*question, {"role": "assistant", "content": a}], default_system) for a in answers]
        starts = [_last_turn_start(row.labels) for row in rows]  # earlier assistant turns (shots) are prompt
        prompts.append(rows[0].input_ids[:starts[0]])
        answer_ids = [row.input_ids[start:] for row, start in zip(rows, starts)]  # the same for every question
    device = next(model.parameters()).device
    logprobs = torch.zeros(len(questions), len(answers))
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    longest_answer = max(len(ids) for ids in answer_ids)
    shared, prefix = 0, None
    if share_prefix:  # every prompt keeps at least its last token to read, whose output scores the answers
        shared = min(len(p) for p in prompts) - 1
        for p in prompts:
            shared = next((i for i in range(shared) if p[i] != prompts[0][i]), shared)
        if shared:
            prefix = model.new_cache(1, shared)
            model(torch.tensor([prompts[0][:shared]], device=device), cache=prefix, last_only=True)
    for length, members in by_length.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            room = length + longest_answer
            cache = prefix.repeat_prefix(len(chunk), room) if prefix is not None else model.new_cache(len(chunk), room)
            ids = torch.tensor([prompts[i][shared:] for i in chunk], device=device)  # (G, L - shared)
            after_prompt = F.log_softmax(model(ids, cache=cache, last_only=True)[:, -1].float(), dim=-1)  # (G, V)
            for a, tokens in enumerate(answer_ids):
                cache.truncate(length)
                total = after_prompt[:, tokens[0]]  # (G,)
                if len(tokens) > 1:
                    rest = torch.tensor(tokens, device=device).expand(len(chunk), -1)  # (G, n_a)
                    logits = model(rest[:, :-1], cache=cache).float()  # (G, n_a - 1, V): predicts tokens 1..n_a-1
                    total = total + F.log_softmax(logits, dim=-1).gather(-1, rest[:, 1:, None])[..., 0].sum(dim=1)
                logprobs[chunk, a] = total.cpu()
    lengths = torch.tensor([len(ids) for ids in answer_ids]).expand(len(questions), -1)
    return logprobs, lengths.clone()


def choose_answers(
    model: nn.Module, tokenizer: Any, questions: Sequence[Sequence[Mapping[str, str]]], answers: Sequence[str],
    default_system: str | None = SMOLLM2_SYSTEM_PROMPT, normalize: bool = False, batch_size: int = 32,
    share_prefix: bool = False,
) -> list[int]:
    """For each conversation, the index of the most likely of ``answers`` (per token when ``normalize``)."""
    logprobs, lengths = answer_logprobs(model, tokenizer, questions, answers, default_system, batch_size, share_prefix)
    return (logprobs / lengths if normalize else logprobs).argmax(dim=1).tolist()
