"""ROUGE (Lin, 2004) as rouge-score computes it: ROUGE-N (n-gram overlap) and ROUGE-L (longest
common subsequence), with rouge-score's tokenizer and optional Porter stemming; with several
references, the best one counts. ``llmcourse.metrics`` re-exports everything here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple

__all__ = ["RougeScore", "rouge_tokenize", "lcs_length", "rouge_n", "rouge_l"]


class RougeScore(NamedTuple):
    """Precision, recall and F-measure of a ROUGE variant, each in [0, 1]."""

    precision: float
    recall: float
    fmeasure: float


_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=1)
def _porter_stemmer() -> Callable[[str], str]:
    # NLTK's Porter stemmer (its default NLTK_EXTENSIONS mode), the one rouge-score uses.
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer().stem


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """Lowercase, keep runs of a-z/0-9 as tokens, and Porter-stem those longer than 3 characters."""
    # Lowercasing comes first, so "É" becomes "é" and is dropped, and the Kelvin sign becomes "k".
    tokens = _NON_ALPHANUMERIC.sub(" ", text.lower()).split()
    if use_stemmer:
        stem = _porter_stemmer()
        tokens = [stem(token) if len(token) > 3 else token for token in tokens]
    return tokens


def _f_measure(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall, 0 when both are 0."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, two rows)."""
    previous = [0] * (len(b) + 1)  # previous[j] = LCS of a[:i-1] and b[:j]
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_n_single(hyp_tokens: list[str], ref_tokens: list[str], n: int) -> RougeScore:
    hyp_ngrams = Counter(tuple(hyp_tokens[i : i + n]) for i in range(len(hyp_tokens) - n + 1))
    ref_ngrams = Counter(tuple(ref_tokens[i : i + n]) for i in range(len(ref_tokens) - n + 1))
    overlap = sum((hyp_ngrams & ref_ngrams).values())  # & keeps the smaller count of each n-gram
    precision = overlap / max(sum(hyp_ngrams.values()), 1)
    recall = overlap / max(sum(ref_ngrams.values()), 1)
    return RougeScore(precision, recall, _f_measure(precision, recall))


def _rouge_l_single(hyp_tokens: list[str], ref_tokens: list[str]) -> RougeScore:
    if not hyp_tokens or not ref_tokens:
        return RougeScore(0.0, 0.0, 0.0)
    common = lcs_length(ref_tokens, hyp_tokens)
    precision, recall = common / len(hyp_tokens), common / len(ref_tokens)
    return RougeScore(precision, recall, _f_measure(precision, recall))


def _best_of_references(
    score: Callable[[list[str], list[str]], RougeScore],
    hypothesis: str,
    reference: str | Sequence[str],
    use_stemmer: bool,
) -> RougeScore:
    """Score against each reference and keep the best F-measure (the first one on a tie)."""
    references = [reference] if isinstance(reference, str) else list(reference)
    if not references:
        raise ValueError("at least one reference is needed")
    hyp_tokens = rouge_tokenize(hypothesis, use_stemmer)
    scores = [score(hyp_tokens, rouge_tokenize(ref, use_stemmer)) for ref in references]
    return max(scores, key=lambda s: s.fmeasure)  # max() returns the first of equal maxima


def rouge_n(hypothesis: str, reference: str | Sequence[str], n: int, use_stemmer: bool = False) -> RougeScore:
    """ROUGE-N: overlap of n-gram counts; with several references, the one with the best F-measure."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    return _best_of_references(lambda h, r: _rouge_n_single(h, r, n), hypothesis, reference, use_stemmer)


def rouge_l(hypothesis: str, reference: str | Sequence[str], use_stemmer: bool = False) -> RougeScore:
    """ROUGE-L: longest common subsequence; with several references, the one with the best F-measure."""
    return _best_of_references(_rouge_l_single, hypothesis, reference, use_stemmer)
