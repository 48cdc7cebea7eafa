"""The corpus as the course's own models read it: the plays split once by play, then tokenized.

Every course model and every notebook that needs "the held-out plays" uses the same split:
``held_out_split()``, 15% of each genre's plays (``TEST_FRACTION``) drawn with ``SPLIT_SEED``.
Tokenizers are learned on the training plays only, so nothing is learned from held-out text.

- ``char_corpus``: the text with speaker names, one character per token;
- ``bpe_corpus``: the same text in byte-level BPE tokens;
- ``pair_corpus``: pairs of consecutive or unrelated lines as word ids, for BERT-style pre-training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from llmcourse import data

__all__ = ["SPLIT_SEED", "TEST_FRACTION", "held_out_split", "TokenCorpus", "CharCorpus", "PairCorpus",
           "char_corpus", "bpe_corpus", "pair_corpus"]


class TokenCorpus(NamedTuple):
    """Shakespeare as token ids, split by play: train on ``train_ids``, validate on held-out plays."""

    tokenizer: Any  # CharTokenizer or BPETokenizer built on the training plays only
    train_ids: Any  # 1-D LongTensor
    val_ids: Any
    train_plays: list[str]
    val_plays: list[str]


CharCorpus = TokenCorpus  # what char_corpus returns


class PairCorpus(NamedTuple):
    """Line pairs as word ids for BERT-style pre-training, split by play."""

    tokenizer: Any  # lowercase WordTokenizer with [PAD] [CLS] [SEP] [MASK] appended
    special: Any  # llmcourse.batches.SpecialTokens
    train_examples: list[tuple[list[int], list[int], int]]  # (ids, segment ids, is_next)
    val_examples: list[tuple[list[int], list[int], int]]
    train_plays: list[str]
    val_plays: list[str]


#: The held-out plays: 15% of each genre, the same for every course model and notebook.
SPLIT_SEED, TEST_FRACTION = 0, 0.15


def held_out_split() -> data.Split:
    """The course's split of the plays: ``train`` and ``test`` (the held-out plays), no validation plays."""
    return data.split_by_play(test_fraction=TEST_FRACTION, seed=SPLIT_SEED)


def _token_corpus(make_tokenizer: Callable[[str], Any]) -> TokenCorpus:
    """The plays split by play, tokenized by ``make_tokenizer(training text)``: nothing learnt from held-out plays."""
    import torch

    split = held_out_split()
    train_text, val_text = data.corpus_text(split.train), data.corpus_text(split.test)
    tokenizer = make_tokenizer(train_text)
    return TokenCorpus(
        tokenizer,
        torch.tensor(tokenizer.encode(train_text)),
        torch.tensor(tokenizer.encode(val_text)),
        [p.slug for p in split.train],
        [p.slug for p in split.test],
    )


def char_corpus() -> CharCorpus:
    """The plays as text with speaker names (``play_text``), one character per token."""
    from llmcourse.tokenization import CharTokenizer

    return _token_corpus(CharTokenizer)  # characters never seen in training become <unk>


def bpe_corpus(vocab_size: int = 768) -> TokenCorpus:
    """The text of ``char_corpus`` in byte-level BPE tokens, the merges learned on the training plays only."""
    from llmcourse.tokenization import BPETokenizer

    return _token_corpus(lambda text: BPETokenizer().train(text, vocab_size))


def pair_corpus(max_length: int = 48, min_count: int = 3, n_train: int | None = None, n_val: int = 4096) -> PairCorpus:
    """Pairs of consecutive or unrelated lines (``nsp_pairs``), encoded as ``[CLS] A [SEP] B [SEP]`` word ids."""
    from llmcourse.batches import add_special_tokens, encode_pair, nsp_pairs
    from llmcourse.tokenization import WordTokenizer

    split = held_out_split()
    tokenizer = WordTokenizer(data.corpus_text(split.train, speakers=False), min_count=min_count, lowercase=True)
    special = add_special_tokens(tokenizer)

    def encode(plays: list[Any], n_pairs: int | None, seed: int) -> list[tuple[list[int], list[int], int]]:
        examples = []
        for pair in nsp_pairs(plays, n_pairs, seed=seed):
            ids, segments = encode_pair(tokenizer.encode(pair.first), tokenizer.encode(pair.second), special, max_length)
            examples.append((ids, segments, int(pair.is_next)))
        return examples

    return PairCorpus(tokenizer, special, encode(split.train, n_train, 0), encode(split.test, n_val, 1),
                      [p.slug for p in split.train], [p.slug for p in split.test])
