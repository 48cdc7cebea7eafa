"""BLEU (Papineni et al., 2002) as sacrebleu computes it: clipped n-gram precisions (n = 1..4),
their geometric mean and the brevity penalty, with mteval's "13a" tokenizer and the usual
smoothings for single sentences. ``llmcourse.metrics`` re-exports everything here; the caveats
(precision rewards saying little, the penalty is all that punishes it) are in its docstring.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_ORDER", "SMOOTHING_METHODS", "tokenize_13a", "brevity_penalty", "BleuScore", "sentence_bleu",
           "corpus_bleu"]


MAX_ORDER = 4
SMOOTHING_METHODS = ("none", "floor", "add-k", "exp")
FLOOR = 0.1  # "floor": a zero count of matches becomes 0.1 (Chen & Cherry, 2014, method 1)
ADD_K = 1  # "add-k": add 1 to matches and totals of orders 2..4 (Chen & Cherry, method 2)

_HTML_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))  # in this order
# Punctuation that always becomes a token of its own: every ASCII symbol except the
# apostrophe, comma, hyphen and period, which the rules below (or nothing) handle.
_ALWAYS_SPLIT = re.compile("([" + re.escape('!"#$%&()*+/:;<=>?@[\\]^_`{|}~') + "])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
_HYPHEN_AFTER_DIGIT = re.compile(r"([0-9])(-)")


def tokenize_13a(line: str) -> list[str]:
    """Split a line into tokens the way mteval-v13a.pl does (sacrebleu's default "13a")."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, character in _HTML_ENTITIES:
        line = line.replace(entity, character)
    # The padding lets the period/comma rules see a non-digit before the first character and
    # after the last one, so a final "." is split off ("3." -> "3 .") while "3.14" stays whole.
    line = f" {line} "
    line = _ALWAYS_SPLIT.sub(r" \1 ", line)
    line = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", line)  # "U.S." -> "U . S ."
    line = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", line)  # "1,a" -> "1 , a"
    line = _HYPHEN_AFTER_DIGIT.sub(r"\1 \2 ", line)  # "1-2" -> "1 - 2"; "well-known" stays
    return line.split()


def _bleu_tokens(text: str) -> list[str]:
    # sacrebleu strips trailing whitespace before tokenising, which matters for a final "-\n".
    return tokenize_13a(text.rstrip())


def _ngram_counts(tokens: Sequence[str], max_order: int = MAX_ORDER) -> Counter[tuple[str, ...]]:
    """How often each n-gram of ``tokens`` occurs, for every n from 1 to ``max_order``."""
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1)
    )


def _closest_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to the hypothesis length; the shorter one on a tie."""
    return min(ref_lens, key=lambda ref_len: (abs(ref_len - hyp_len), ref_len))


def brevity_penalty(sys_len: int, ref_len: int) -> float:
    """BLEU's brevity penalty: 1 if the hypothesis is at least as long, else ``exp(1 - r / c)``."""
    if sys_len >= ref_len:
        return 1.0
    return math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0


@dataclass(frozen=True)
class BleuScore:
    """A BLEU score and the statistics it is computed from."""

    score: float  # 0-100
    precisions: list[float]  # n-gram precisions in percent, n = 1..4, after smoothing
    bp: float  # brevity penalty
    sys_len: int  # hypothesis tokens
    ref_len: int  # reference tokens (closest reference of each sentence, summed)
    counts: list[int]  # clipped n-gram matches, n = 1..4 (before any add-k smoothing)
    totals: list[int]  # hypothesis n-grams, n = 1..4


def _bleu_statistics(hypothesis: str, references: Sequence[str]) -> tuple[list[int], list[int], int, int]:
    """Clipped matches and totals per n-gram order, hypothesis length and closest reference length."""
    if isinstance(references, str):
        raise TypeError("references must be a sequence of strings, not one string: write [reference]")
    if len(references) == 0:
        raise ValueError("at least one reference is needed")
    hyp_tokens = _bleu_tokens(hypothesis)
    ref_tokens = [_bleu_tokens(reference) for reference in references]
    # Clipping: an n-gram is credited at most as often as it occurs in a single reference.
    max_ref_counts: Counter[tuple[str, ...]] = Counter()
    for tokens in ref_tokens:
        max_ref_counts |= _ngram_counts(tokens)  # | keeps the larger count of each n-gram
    counts, totals = [0] * MAX_ORDER, [0] * MAX_ORDER
    for ngram, count in _ngram_counts(hyp_tokens).items():
        totals[len(ngram) - 1] += count
        counts[len(ngram) - 1] += min(count, max_ref_counts[ngram])
    ref_len = _closest_length(len(hyp_tokens), [len(tokens) for tokens in ref_tokens])
    return counts, totals, len(hyp_tokens), ref_len


def _bleu_from_statistics(
    counts: list[int], totals: list[int], sys_len: int, ref_len: int, smooth: str, effective_order: bool
) -> BleuScore:
    """BLEU from its sufficient statistics, smoothing zero counts as sacrebleu does."""
    if smooth not in SMOOTHING_METHODS:
        raise ValueError(f"unknown smoothing {smooth!r}; use one of {SMOOTHING_METHODS}")
    bp = brevity_penalty(sys_len, ref_len)
    precisions = [0.0] * MAX_ORDER
    if not any(counts):  # nothing matches at any order: 0, whatever the smoothing
        return BleuScore(0.0, precisions, bp, sys_len, ref_len, counts, totals)

    order = MAX_ORDER  # how many precisions enter the geometric mean
    halvings = 0  # "exp" smoothing: the k-th order without matches gets 1 / 2^k of a match
    for n in range(1, MAX_ORDER + 1):
        matched, total = counts[n - 1], totals[n - 1]
        if smooth == "add-k" and n > 1:
            matched, total = matched + ADD_K, total + ADD_K
        if total == 0:
            break  # hypothesis shorter than n tokens: this order and the ones above stay at 0
        if effective_order:
            order = n  # sentence BLEU: use only the orders the hypothesis has n-grams for
        if matched > 0:
            precisions[n - 1] = 100 * matched / total
        elif smooth == "exp":
            halvings += 1
            precisions[n - 1] = 100 / (2**halvings * total)
        elif smooth == "floor":
            precisions[n - 1] = 100 * FLOOR / total

    used = precisions[:order]
    if min(used) == 0.0:  # log 0 = -inf: the geometric mean is 0
        return BleuScore(0.0, precisions, bp, sys_len, ref_len, counts, totals)
    score = bp * math.exp(sum(math.log(p) for p in used) / order)
    return BleuScore(score, precisions, bp, sys_len, ref_len, counts, totals)


def sentence_bleu(
    hypothesis: str, references: Sequence[str], smooth: str = "exp", effective_order: bool = True
) -> BleuScore:
    """BLEU of one hypothesis against one or more references (``sacrebleu.sentence_bleu``).

    ``effective_order=True`` (``sacrebleu.sentence_bleu``'s default; ``BLEU()`` has False) averages
    only the orders n for which the hypothesis has n-grams, so a 3-word sentence can score.
    """
    return _bleu_from_statistics(*_bleu_statistics(hypothesis, references), smooth, effective_order)


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    smooth: str = "exp",
    effective_order: bool = False,
) -> BleuScore:
    """BLEU of a corpus (``sacrebleu.corpus_bleu``); ``references[i]`` are those of ``hypotheses[i]``.

    The references are grouped per hypothesis, and their number may vary. sacrebleu takes them
    the other way round, as reference *streams* (stream k holds every hypothesis's k-th
    reference, None where it has fewer): ``list(zip(*references))`` when the numbers are equal.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} lists of references")
    counts, totals, sys_len, ref_len = [0] * MAX_ORDER, [0] * MAX_ORDER, 0, 0
    for hypothesis, sentence_references in zip(hypotheses, references):
        matched, total, hyp_len, closest_len = _bleu_statistics(hypothesis, sentence_references)
        counts = [a + b for a, b in zip(counts, matched)]
        totals = [a + b for a, b in zip(totals, total)]
        sys_len, ref_len = sys_len + hyp_len, ref_len + closest_len
    return _bleu_from_statistics(counts, totals, sys_len, ref_len, smooth, effective_order)
