"""Tokenizers from scratch: characters, words and byte-level byte-pair encoding (BPE).

Every tokenizer here has the same small interface: ``encode(text) -> list[int]``,
``decode(ids) -> str``, ``tokens(text) -> list[str]`` (the pieces, for display) and
``vocab_size``.

The BPE follows the recipe of Sennrich et al. (2016) on **bytes** rather than characters, as
GPT-2 and most later models do: the 256 byte values are the starting vocabulary, so any
string can be encoded and ``decode(encode(text)) == text`` always holds. Text is first cut
into chunks by a regular expression (so merges never cross a word boundary), then the most
frequent adjacent pair of tokens is merged into a new token, again and again, until the
vocabulary has the requested size. The tests check the learned merges against the
``tokenizers`` library trained with the same settings.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from tqdm.auto import tqdm

__all__ = [
    "WHITESPACE_SPLIT",
    "GPT2_SPLIT",
    "UNK",
    "word_tokenize",
    "split_sentences",
    "CharTokenizer",
    "WordTokenizer",
    "get_pair_counts",
    "merge",
    "BPETokenizer",
    "tokenizer_from_dict",
]

#: Runs of word characters, or runs of other non-space characters; the same split as the
#: ``Whitespace`` pre-tokenizer of the ``tokenizers`` library. Spaces are dropped.
WHITESPACE_SPLIT = r"\w+|[^\w\s]+"

#: GPT-2's split, written for Python's ``re``: English contractions, letters, digits and
#: punctuation each with an optional leading space, and whitespace runs. On ASCII text it cuts
#: exactly as the ``ByteLevel`` pre-tokenizer of ``tokenizers`` does (a test checks this).
GPT2_SPLIT = r"""'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""

#: The token standing for anything outside a vocabulary.
UNK = "<unk>"

# A word is letters/digits with inner apostrophes or hyphens ("woo'd", "step-dame") and an
# optional leading apostrophe ("'tis", "'em"); any other non-space character is a token of its own.
_WORD = re.compile(r"'?\w+(?:['\-]\w+)*|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def word_tokenize(text: str, lowercase: bool = False) -> list[str]:
    """Cut text into words and single punctuation marks (whitespace is dropped)."""
    return _WORD.findall(text.lower() if lowercase else text)


def split_sentences(text: str) -> list[str]:
    """Cut text into sentences after ``.``, ``!`` or ``?`` followed by whitespace."""
    return [part for part in (p.strip() for p in _SENTENCE_END.split(text)) if part]


class CharTokenizer:
    """One token per character; characters unseen when built map to ``<unk>`` (id 0)."""

    def __init__(self, text: str) -> None:
        self.itos: list[str] = [UNK, *sorted(set(text))]
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens, ``<unk>`` included."""
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Characters to ids."""
        return [self.stoi.get(ch, 0) for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to characters (``<unk>`` comes back as the text ``<unk>``)."""
        return "".join(self.itos[i] for i in ids)

    def tokens(self, text: str) -> list[str]:
        """The characters, with unseen ones shown as ``<unk>``."""
        return [self.itos[i] for i in self.encode(text)]

    def to_dict(self) -> dict[str, Any]:
        """What rebuilds this tokenizer (``tokenizer_from_dict``): its table, as JSON-ready lists."""
        return {"type": "CharTokenizer", "itos": self.itos, "lowercase": False}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> CharTokenizer:
        """The tokenizer that ``to_dict`` described (no text to rebuild it from: the table is set)."""
        tokenizer = cls.__new__(cls)
        tokenizer.itos = list(saved["itos"])
        tokenizer.stoi = {token: i for i, token in enumerate(tokenizer.itos)}
        return tokenizer


class WordTokenizer:
    """Words and punctuation marks from ``word_tokenize``; rare words map to ``<unk>`` (id 0).

    Whitespace is not kept, so ``decode`` joins tokens with single spaces: a word tokenizer
    cannot give back the original text exactly.
    """

    def __init__(self, text: str, min_count: int = 1, lowercase: bool = False) -> None:
        self.lowercase = lowercase
        counts = Counter(word_tokenize(text, lowercase))
        kept = sorted(word for word, count in counts.items() if count >= min_count)
        self.itos: list[str] = [UNK, *kept]
        self.stoi: dict[str, int] = {word: i for i, word in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens, ``<unk>`` included."""
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Words to ids."""
        return [self.stoi.get(word, 0) for word in word_tokenize(text, self.lowercase)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to words joined by spaces (the original spacing is lost)."""
        return " ".join(self.itos[i] for i in ids)

    def tokens(self, text: str) -> list[str]:
        """Words and punctuation, with out-of-vocabulary words shown as ``<unk>``."""
        return [self.itos[i] for i in self.encode(text)]

    def to_dict(self) -> dict[str, Any]:
        """What rebuilds this tokenizer (``tokenizer_from_dict``): its table and its case rule."""
        return {"type": "WordTokenizer", "itos": self.itos, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> WordTokenizer:
        """The tokenizer that ``to_dict`` described (special tokens appended later are in its table)."""
        tokenizer = cls.__new__(cls)
        tokenizer.lowercase = saved["lowercase"]
        tokenizer.itos = list(saved["itos"])
        tokenizer.stoi = {token: i for i, token in enumerate(tokenizer.itos)}
        return tokenizer


Pair = tuple[int, int]


def get_pair_counts(ids: Sequence[int], counts: dict[Pair, int] | None = None, weight: int = 1) -> dict[Pair, int]:
    """Count adjacent pairs in ``ids`` (overlapping: ``[1, 1, 1]`` has ``(1, 1)`` twice).

    With ``counts`` given, add ``weight`` per occurrence to it and return it.
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """Byte-level BPE: ids 0-255 are the bytes, each learned merge adds one token.

    ``pattern`` is the regular expression that cuts text into chunks before BPE
    (``GPT2_SPLIT`` by default; ``None`` treats the whole text as one chunk, which is slow).
    """

    def __init__(self, pattern: str | None = GPT2_SPLIT) -> None:
        self.pattern = pattern
        self._split = re.compile(pattern) if pattern is not None else None
        self.merges: dict[Pair, int] = {}  # (left id, right id) -> new id, in the order learned
        self.merge_counts: list[int] = []  # how often each pair occurred when it was merged
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}

    @property
    def vocab_size(self) -> int:
        """Number of tokens: 256 bytes plus one per distinct merged token."""
        return len(self.vocab)

    def _chunks(self, text: str) -> list[str]:
        return self._split.findall(text) if self._split is not None else [text]

    def train(self, text: str, vocab_size: int, progress: bool = False) -> BPETokenizer:
        """Learn merges on ``text`` until the vocabulary has ``vocab_size`` tokens.

        The most frequent pair wins; ties go to the smallest ``(left id, right id)``, the rule
        of the ``tokenizers`` library. Training stops early if no pair is left to merge.
        """
        if vocab_size < 256:
            raise ValueError(f"a byte-level vocabulary has at least 256 tokens, got vocab_size={vocab_size}")
        self.merges, self.merge_counts = {}, []
        self.vocab = {i: bytes([i]) for i in range(256)}
        id_of = {token: i for i, token in self.vocab.items()}
        # Work on distinct chunks with their frequencies: " the" is merged once, not 20,000 times.
        chunk_counts = Counter(self._chunks(text))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())
        counts: dict[Pair, int] = {}
        where: dict[Pair, set[int]] = {}  # pair -> indices of the words holding it
        for w, ids in enumerate(words):
            get_pair_counts(ids, counts, freqs[w])
            for pair in zip(ids, ids[1:]):
                where.setdefault(pair, set()).add(w)
        # A max-heap of (-count, pair), so equal counts pop the smallest pair first. A merge only
        # lowers the counts of pairs already there, so an entry can be stale (too high): it is
        # refreshed when it reaches the top. Pairs that gain occurrences get a new entry.
        heap = [(-count, pair) for pair, count in counts.items()]
        heapq.heapify(heap)
        bar = tqdm(total=vocab_size - 256, desc="BPE merges", disable=not progress)
        while len(self.vocab) < vocab_size and heap:
            negative_count, pair = heapq.heappop(heap)
            count = counts.get(pair, 0)
            if count != -negative_count:
                if count > 0:
                    heapq.heappush(heap, (-count, pair))
                continue
            token = self.vocab[pair[0]] + self.vocab[pair[1]]
            # Two merge paths can build the same bytes ("h"+"er", "he"+"r"): one token, one id.
            new_id = id_of.setdefault(token, len(self.vocab))
            self.vocab[new_id] = token
            if pair not in self.merges:
                self.merges[pair] = new_id
                self.merge_counts.append(count)
            gained: set[Pair] = set()
            for w in where.pop(pair):
                old = words[w]
                new = merge(old, pair, new_id)
                if len(new) == len(old):
                    continue  # the pair left this word in an earlier merge
                for p in zip(old, old[1:]):
                    counts[p] -= freqs[w]
                for p in zip(new, new[1:]):
                    counts[p] = counts.get(p, 0) + freqs[w]
                    where.setdefault(p, set()).add(w)
                    gained.add(p)
                words[w] = new
            for p in gained:
                if counts[p] > 0:
                    heapq.heappush(heap, (-counts[p], p))
            bar.update(1)
        bar.close()
        return self

    def _encode_chunk(self, ids: list[int], rank: dict[Pair, int]) -> list[int]:
        while len(ids) >= 2:
            # Apply the earliest-learned merge present, as training did.
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, len(rank)))
            if pair not in rank:
                break
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def encode(self, text: str) -> list[int]:
        """Text to token ids: UTF-8 bytes, then the learned merges, chunk by chunk."""
        rank = {pair: r for r, pair in enumerate(self.merges)}
        cache: dict[str, list[int]] = {}
        out: list[int] = []
        for chunk in self._chunks(text):
            if chunk not in cache:
                cache[chunk] = self._encode_chunk(list(chunk.encode("utf-8")), rank)
            out.extend(cache[chunk])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids to text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def tokens(self, text: str) -> list[str]:
        """The pieces of ``text`` as strings (a piece holding part of a character shows U+FFFD)."""
        return [self.vocab[i].decode("utf-8", errors="replace") for i in self.encode(text)]

    def to_dict(self) -> dict[str, Any]:
        """What rebuilds this tokenizer: the merges in the order learned rebuild everything else."""
        merges = [[left, right, new_id] for (left, right), new_id in self.merges.items()]
        return {"type": "BPETokenizer", "pattern": self.pattern, "merges": merges, "merge_counts": self.merge_counts}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> BPETokenizer:
        """The tokenizer that ``to_dict`` described, its vocabulary rebuilt from the merges."""
        bpe = cls(saved["pattern"])
        for left, right, new_id in saved["merges"]:
            bpe.merges[(left, right)] = new_id
            bpe.vocab[new_id] = bpe.vocab[left] + bpe.vocab[right]
        bpe.merge_counts = list(saved["merge_counts"])
        return bpe


def tokenizer_from_dict(saved: dict[str, Any]) -> CharTokenizer | WordTokenizer | BPETokenizer:
    """Any of the course's tokenizers from what its ``to_dict`` returned (``saved["type"]`` names the class)."""
    classes = {cls.__name__: cls for cls in (CharTokenizer, WordTokenizer, BPETokenizer)}
    if saved.get("type") not in classes:
        raise ValueError(f"not a saved course tokenizer: type {saved.get('type')!r}, expected one of {sorted(classes)}")
    return classes[saved["type"]].from_dict(saved)
