"""Batches for pre-training: random windows of a token stream (language models), and sentence
pairs with special tokens, segments and fresh masks (BERT's two objectives).

Each batch is a dict of tensors named as in Transformers, read by the objectives of ``llmcourse.objectives``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from llmcourse.data import Play, speeches
from llmcourse.objectives import Batch, mask_tokens

__all__ = [
    "lm_batches",
    "lm_eval_batches",
    "SpecialTokens",
    "add_special_tokens",
    "SentencePair",
    "nsp_pairs",
    "encode_pair",
    "pair_batches",
]


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
# Sentence pairs for BERT's masked LM and next sentence prediction


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
