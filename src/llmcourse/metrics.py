"""Evaluation metrics: perplexity, BLEU, ROUGE and classification scores, in one namespace.

BLEU and ROUGE are written in their own modules (``llmcourse.bleu``, ``llmcourse.rouge``) and
re-exported here; perplexity, distinct-n and the classification scores are written here.

Each metric is written out in a few small functions and gives the same numbers as the library
people report with (sacrebleu, rouge-score, scikit-learn); ``tests/test_metrics.py`` checks
that on tricky and random inputs. Every metric has a way to mislead, and chapter 5 shows each:

* **Perplexity** ``exp(mean negative log-likelihood)`` (natural log) is the number of equally
  likely tokens the model is, on average, choosing between. It depends on the tokenizer: two
  models are comparable only on the same tokens of the same text. **Bits per character**, the
  text's whole negative log-likelihood in bits divided by its number of characters, does not:
  it compares models with any tokenizers, provided each gives a probability to exactly the
  same string (``causal_lm_nll`` scores a long text in overlapping windows).
* **BLEU** is a geometric mean of clipped n-gram *precisions* (n = 1..4) times a brevity
  penalty. Precision alone rewards saying little: a two-word hypothesis whose two words are in
  the reference has perfect precisions. The *brevity penalty* ``exp(1 - r / c)`` (hypothesis
  length c shorter than reference length r) is all that punishes it, and nothing punishes
  length itself (extra words only lower the precisions). At corpus level the penalty uses the
  summed lengths, so short sentences are forgiven when others are long. The score also
  depends on the tokenizer (here sacrebleu's default, mteval's "13a") and, for single
  sentences, on how zero counts are smoothed.
* **ROUGE** is recall-oriented: the share of the reference's n-grams (or of its longest common
  subsequence, ROUGE-L) found in the hypothesis. Copying the source text, or just writing
  more, raises recall; a summary that pastes the input wholesale scores well without
  summarising anything. Look at precision and F-measure too, and at the length.
* **Distinct-n** (Li et al., 2016), the share of n-grams in a set of generated texts that are
  different, measures variety, not quality: random characters score almost 1.
* **Accuracy** on unbalanced classes: when 95 % of the examples are of one class, always
  predicting that class scores 95 %. Macro-averaged F1 (every class counts the same) and the
  confusion matrix show what accuracy hides.

Argument order: for BLEU and ROUGE the system's output comes first, then the reference(s)
(rouge-score's own ``score(target, prediction)`` takes the reference first); for the
classification scores the true labels come first, as in scikit-learn.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from statistics import NormalDist
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

# re-exported, so that ``metrics.sentence_bleu`` and the others keep working
from .bleu import SMOOTHING_METHODS, BleuScore, brevity_penalty, corpus_bleu, sentence_bleu, tokenize_13a
from .rouge import RougeScore, lcs_length, rouge_l, rouge_n, rouge_tokenize

__all__ = [
    "perplexity",
    "perplexity_from_logits",
    "bits_per_character",
    "TextScore",
    "causal_lm_nll",
    "distinct_n",
    "tokenize_13a",
    "brevity_penalty",
    "BleuScore",
    "sentence_bleu",
    "corpus_bleu",
    "RougeScore",
    "rouge_tokenize",
    "lcs_length",
    "rouge_n",
    "rouge_l",
    "accuracy",
    "wilson_interval",
    "precision_recall_f1",
    "confusion_matrix",
]


# --------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------


def perplexity(mean_nll: float) -> float:
    """Perplexity from a mean negative log-likelihood in nats: ``exp(mean_nll)``."""
    return math.exp(mean_nll)


def perplexity_from_logits(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """Perplexity of ``targets`` under ``logits``, skipping target positions equal to ``ignore_index``.

    Shapes: logits (..., V), targets (...), e.g. (B, T, V) and (B, T). Computed in float64.
    """
    logits = logits.detach().reshape(-1, logits.shape[-1]).double()  # (N, V)
    targets = targets.reshape(-1)  # (N,)
    kept = targets != ignore_index
    if not bool(kept.any()):
        raise ValueError("every target is ignore_index: perplexity is undefined")
    log_probs = torch.log_softmax(logits[kept], dim=-1)  # (K, V)
    target_log_probs = log_probs.gather(1, targets[kept].unsqueeze(1))  # (K, 1)
    return perplexity(-target_log_probs.mean().item())


def bits_per_character(nll: float, n_characters: int) -> float:
    """Bits per character of a text from its summed negative log-likelihood ``nll`` in nats: ``nll / (n ln 2)``.

    ``nll`` must be the cost of the whole text (every token predicted, the first one included),
    whatever the tokens are; then models with different tokenizers compare on the same scale.
    """
    if n_characters < 1:
        raise ValueError(f"a text of {n_characters} characters has no bits per character")
    return nll / (n_characters * math.log(2))


class TextScore(NamedTuple):
    """What a language model thinks of a text: the summed loss of the tokens it predicted, and how many."""

    nll: float  # summed negative log-likelihood, in nats
    n_tokens: int  # predicted (scored) tokens

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per predicted token, in nats (its exp is the perplexity)."""
        return self.nll / self.n_tokens


def causal_lm_nll(
    model: Callable[[torch.Tensor], Any],
    ids: Sequence[int],
    context: Sequence[int] = (),
    window: int = 512,
    stride: int | None = None,
) -> TextScore:
    """Summed negative log-likelihood of the tokens ``ids`` under a causal language model, in overlapping windows.

    ``model`` maps (1, T) token ids to (1, T, V) logits, or to an output with a ``.logits``
    field (a Hugging Face causal LM). ``context`` is what comes before the text (a BOS token, a
    prompt): it conditions the predictions and is not scored. Every token of ``ids`` is then
    predicted; with no ``context`` nothing can predict the first one, so it is skipped and
    ``n_tokens`` is ``len(ids) - 1``. A text longer than ``window`` tokens is read in windows of
    ``window`` tokens, each ``stride`` tokens (default ``window // 2``) after the one before, and
    each window scores only the tokens no earlier window scored: after the first window every
    token is predicted from at least ``window - stride`` tokens before it.
    """
    stride = window // 2 if stride is None else stride
    if not 1 <= stride < window:
        raise ValueError(f"need 1 <= stride < window, got stride {stride} and window {window}")
    tokens = torch.tensor([*context, *ids], dtype=torch.long)
    first = max(len(context), 1)  # position of the first token that has something before it
    if first >= len(tokens):
        raise ValueError("no token to score: the text is empty, or has one token and no context")
    parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    if parameter is not None:  # the ids go where the weights are (a GPU, if the model is on one)
        tokens = tokens.to(parameter.device)
    # The first window is as long as allowed; a context longer than it is cut to window - stride tokens.
    nll, scored, end = 0.0, first, min(max(window, first + stride), len(tokens))
    with torch.no_grad():
        while True:
            begin = max(0, end - window)
            output = model(tokens[begin:end].unsqueeze(0))
            logits = getattr(output, "logits", output)[0]  # (end - begin, V); row i predicts token begin + i + 1
            targets = tokens[scored:end]  # the tokens this window scores, each predicted by the row before it
            nll += F.cross_entropy(logits[scored - 1 - begin : end - 1 - begin].float(), targets, reduction="sum").item()
            if end == len(tokens):
                return TextScore(nll, len(tokens) - first)
            scored, end = end, min(end + stride, len(tokens))


def distinct_n(texts: Sequence[Sequence[Hashable]], n: int) -> float:
    """Distinct-n: different n-grams / all n-grams, pooled over ``texts`` (each a sequence of tokens).

    A string is a sequence of characters, so a list of strings gives character n-grams; pass
    ``[text.split() for text in texts]`` for word n-grams. 1 means no n-gram repeats anywhere.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = [tuple(text[i : i + n]) for text in texts for i in range(len(text) - n + 1)]
    if not grams:
        raise ValueError(f"the texts hold no {n}-gram: distinct-{n} is undefined")
    return len(set(grams)) / len(grams)


# --------------------------------------------------------------------------------------------
# Classification, as scikit-learn computes it
# --------------------------------------------------------------------------------------------

Label = Hashable  # ints, strings, ...: anything hashable and sortable
AVERAGES = ("binary", "macro", "micro", "weighted")


def _check_lengths(y_true: Sequence[Label], y_pred: Sequence[Label]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no labels to score")


def accuracy(y_true: Sequence[Label], y_pred: Sequence[Label]) -> float:
    """Fraction of predictions equal to the true label."""
    _check_lengths(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (an accuracy measured on ``n`` examples).

    Better than ``p +- z sqrt(p(1-p)/n)`` near 0 and 1 and for small ``n``, where that one leaves
    [0, 1] or shrinks to nothing. Equal to SciPy's ``binomtest(...).proportion_ci(method="wilson")``.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 1; rounding would leave a hair's breadth.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _divide(numerator: float, denominator: float, zero_division: float) -> float:
    return numerator / denominator if denominator != 0 else zero_division


def _mean(values: list[float], weights: list[int] | None) -> float:
    """Weighted mean that skips NaNs; a plain mean if all weights are 0 (as scikit-learn does)."""
    weights = weights if weights is not None else [1] * len(values)
    kept = [(v, w) for v, w in zip(values, weights) if not math.isnan(v)]
    if not kept:
        return math.nan
    total_weight = sum(w for _, w in kept)
    if total_weight == 0:
        return sum(v for v, _ in kept) / len(kept)
    return sum(v * w for v, w in kept) / total_weight


def precision_recall_f1(
    y_true: Sequence[Label],
    y_pred: Sequence[Label],
    average: str = "binary",
    pos_label: Label = 1,
    labels: Sequence[Label] | None = None,
    zero_division: float = 0.0,
) -> tuple[float, float, float]:
    """Precision, recall and F1, averaged as ``sklearn.metrics.precision_recall_fscore_support``.

    ``"binary"``: the scores of ``pos_label`` (at most two classes; ``labels`` is ignored).
    ``"macro"``: mean over classes. ``"weighted"``: mean weighted by each class's support.
    ``"micro"``: from true positives, predictions and supports summed over classes (for
    single-label data, precision = recall = F1 = accuracy when every class is counted).
    ``labels`` picks the classes (default: all that occur). A ratio with a zero denominator
    (a class never predicted, or never true) is ``zero_division`` (0, 1 or NaN; NaNs are
    left out of the averages).
    """
    _check_lengths(y_true, y_pred)
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}; use one of {AVERAGES}")
    present = set(y_true) | set(y_pred)
    if average == "binary":
        if len(present) > 2:
            raise ValueError("average='binary' needs two classes at most; try 'macro', 'micro' or 'weighted'")
        if pos_label not in present and len(present) == 2:
            raise ValueError(f"pos_label={pos_label!r} is not one of the labels {sorted(present)}")
        labels = [pos_label]
    elif labels is None:
        labels = sorted(present)

    pairs = Counter(zip(y_true, y_pred))
    n_true, n_pred = Counter(y_true), Counter(y_pred)
    true_positives = [pairs[label, label] for label in labels]
    predicted = [n_pred[label] for label in labels]
    support = [n_true[label] for label in labels]
    if average == "micro":
        true_positives, predicted, support = [sum(true_positives)], [sum(predicted)], [sum(support)]

    precision = [_divide(tp, p, zero_division) for tp, p in zip(true_positives, predicted)]
    recall = [_divide(tp, s, zero_division) for tp, s in zip(true_positives, support)]
    # F1 = 2 tp / (2 tp + fp + fn); defined (as 0) even where precision or recall is not.
    f1 = [_divide(2 * tp, s + p, zero_division) for tp, s, p in zip(true_positives, support, predicted)]
    weights = support if average == "weighted" else None
    return _mean(precision, weights), _mean(recall, weights), _mean(f1, weights)


def confusion_matrix(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None = None
) -> list[list[int]]:
    """Counts ``[i][j]`` of examples of class ``labels[i]`` predicted as ``labels[j]``.

    ``labels`` defaults to every class that occurs, sorted; examples whose true or predicted
    class is not in ``labels`` are left out.
    """
    _check_lengths(y_true, y_pred)
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred))
    pairs = Counter(zip(y_true, y_pred))
    return [[pairs[actual, predicted] for predicted in labels] for actual in labels]
