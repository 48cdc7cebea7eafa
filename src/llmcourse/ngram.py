"""An n-gram language model: counts, smoothing, probabilities, perplexity and sampling.

A sentence ``w_1 .. w_m`` is padded to ``<s> .. <s> w_1 .. w_m </s>`` (``n - 1`` start tokens),
and the model predicts every real token and the end token ``</s>`` from the ``n - 1`` tokens
before it:

    P(w_1 .. w_m) = prod_{i=1}^{m+1} P(w_i | w_{i-n+1} .. w_{i-1}),   w_{m+1} = </s>.

The vocabulary the model predicts over is the training words seen at least ``min_count`` times,
plus ``<unk>`` (every other word) and ``</s>``; ``<s>`` is context only, never predicted.

Two ways to give unseen n-grams some probability:

* ``"add-k"``: add ``k`` to every count (Laplace smoothing when ``k = 1``; ``k = 0`` is the
  unsmoothed maximum-likelihood estimate).
* ``"kneser-ney"``: interpolated Kneser-Ney (Jurafsky & Martin, *Speech and Language
  Processing*, ch. 3): subtract a discount ``d`` from every seen count and hand the mass to a
  lower-order distribution built from *continuation* counts (in how many different contexts
  a word appears), down to a uniform distribution.

Both give a proper distribution: for every context the probabilities of the vocabulary sum
to 1 (the tests check this). Log-probabilities are natural logarithms (nats).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence

from llmcourse import data
from llmcourse.tokenization import UNK, split_sentences, word_tokenize

__all__ = ["BOS", "EOS", "UNK", "NGramModel", "play_sentences"]

BOS = "<s>"
EOS = "</s>"

Context = tuple[str, ...]


def play_sentences(selection: Sequence[data.Play], lowercase: bool = True) -> list[list[str]]:
    """The plays' speeches cut into sentences of word tokens (punctuation kept)."""
    result = []
    for play in selection:
        for speech in data.speeches(play):
            for sentence in split_sentences(" ".join(speech.lines)):
                tokens = word_tokenize(sentence, lowercase)
                if tokens:
                    result.append(tokens)
    return result


class NGramModel:
    """An n-gram language model over token lists, with add-k or Kneser-Ney smoothing."""

    def __init__(self, n: int, smoothing: str = "kneser-ney", k: float = 1.0, discount: float = 0.75, min_count: int = 1) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if smoothing not in ("add-k", "kneser-ney"):
            raise ValueError(f"unknown smoothing {smoothing!r}; use 'add-k' or 'kneser-ney'")
        if k < 0 or not 0 < discount <= 1:
            raise ValueError("need k >= 0 and 0 < discount <= 1")
        self.n, self.smoothing, self.k, self.discount, self.min_count = n, smoothing, k, discount, min_count
        self.vocab: list[str] = [EOS, UNK]
        self._known: set[str] = set(self.vocab)
        # counts[m][context][token], for n-grams of length m = 1..n. The top order holds raw
        # counts; with Kneser-Ney the lower orders hold continuation counts.
        self.counts: dict[int, dict[Context, dict[str, int]]] = {m: {} for m in range(1, n + 1)}
        self._totals: dict[int, dict[Context, int]] = {m: {} for m in range(1, n + 1)}

    def fit(self, sentences: Iterable[Sequence[str]], vocabulary: Iterable[str] | None = None) -> NGramModel:
        """Count n-grams in ``sentences`` (lists of tokens).

        The vocabulary is the tokens seen ``min_count`` times or more, unless ``vocabulary`` is
        given (then it is used as is; ``</s>`` and ``<unk>`` are always added).
        """
        sentences = [list(s) for s in sentences]
        if vocabulary is None:
            frequency = Counter(token for s in sentences for token in s)
            vocabulary = (token for token, count in frequency.items() if count >= self.min_count)
        self.vocab = [EOS, UNK, *sorted(set(vocabulary) - {BOS, EOS, UNK})]
        self._known = set(self.vocab)
        grams = Counter(gram for sentence in sentences for gram in self.ngrams(sentence))
        top: dict[Context, dict[str, int]] = {}
        for gram, count in grams.items():
            top.setdefault(gram[:-1], {})[gram[-1]] = count
        self.counts = {self.n: top}
        for m in range(self.n - 1, 0 if self.smoothing == "kneser-ney" else self.n, -1):
            # Continuation counts: in how many distinct (m+1)-grams does (context, token) end?
            lower: dict[Context, dict[str, int]] = {}
            for context, followers in self.counts[m + 1].items():
                table = lower.setdefault(context[1:], {})
                for token in followers:
                    table[token] = table.get(token, 0) + 1
            self.counts[m] = lower
        self._totals = {m: {h: sum(c.values()) for h, c in table.items()} for m, table in self.counts.items()}
        return self

    def known(self, tokens: Iterable[str]) -> list[str]:
        """Tokens with out-of-vocabulary ones replaced by ``<unk>``."""
        return [t if t in self._known or t == BOS else UNK for t in tokens]

    def ngrams(self, sentence: Sequence[str]) -> Iterable[tuple[str, ...]]:
        """The n-grams of a padded sentence, out-of-vocabulary words as ``<unk>``."""
        padded = [BOS] * (self.n - 1) + self.known(sentence) + [EOS]
        return zip(*(padded[i:] for i in range(self.n)))

    def count(self, ngram: Sequence[str]) -> int:
        """How often the n-gram (of length ``n``, already mapped to the vocabulary) was seen."""
        *context, token = ngram
        return self.counts[self.n].get(tuple(context), {}).get(token, 0)

    def _history(self, context: Sequence[str]) -> Context:
        # The last n - 1 tokens of the context, padded on the left with <s>.
        history = tuple(self.known(context))[-(self.n - 1) :] if self.n > 1 else ()
        return (BOS,) * (self.n - 1 - len(history)) + history

    def prob(self, token: str, context: Sequence[str] = ()) -> float:
        """P(token | context); the context is padded with ``<s>`` or cut to its last ``n - 1`` tokens."""
        if token == BOS:
            raise ValueError("<s> is never predicted; it only pads contexts")
        return self._prob(self.known([token])[0], self._history(context))

    def _prob(self, token: str, history: Context) -> float:
        # token and history already mapped to the vocabulary; history has n - 1 tokens.
        if self.smoothing == "add-k":
            return self._add_k(token, history)
        return self._kneser_ney(token, history, self.n)

    def _add_k(self, token: str, history: Context) -> float:
        followers = self.counts[self.n].get(history)
        seen = followers.get(token, 0) if followers else 0
        total = self._totals[self.n].get(history, 0)
        if total == 0 and self.k == 0:
            return 1.0 / len(self.vocab)  # an unseen context says nothing: uniform
        return (seen + self.k) / (total + self.k * len(self.vocab))

    def _kneser_ney(self, token: str, history: Context, m: int) -> float:
        # P_m(w | h) = max(c(h, w) - d, 0) / c(h) + d * N(h) / c(h) * P_{m-1}(w | h[1:]),
        # with N(h) the number of distinct tokens seen after h; P_0 is uniform.
        if m == 0:
            return 1.0 / len(self.vocab)
        lower = self._kneser_ney(token, history[1:], m - 1)
        followers = self.counts[m].get(history)
        if not followers:
            return lower  # unseen context: all the mass goes to the shorter context
        total = self._totals[m][history]
        discounted = max(followers.get(token, 0) - self.discount, 0.0) / total
        return discounted + self.discount * len(followers) / total * lower

    def distribution(self, context: Sequence[str] = ()) -> dict[str, float]:
        """P(token | context) for every token of the vocabulary (faster than calling ``prob``)."""
        history = self._history(context)
        if self.smoothing == "add-k":
            return {token: self._add_k(token, history) for token in self.vocab}
        # The Kneser-Ney recursion of _kneser_ney, one order at a time, for all tokens at once.
        probs = dict.fromkeys(self.vocab, 1.0 / len(self.vocab))
        for m in range(1, self.n + 1):
            followers = self.counts[m].get(history[self.n - m :])
            if not followers:
                continue
            total = self._totals[m][history[self.n - m :]]
            weight = self.discount * len(followers) / total
            probs = {token: weight * p for token, p in probs.items()}
            for token, count in followers.items():
                probs[token] += max(count - self.discount, 0.0) / total
        return probs

    def logprob(self, sentence: Sequence[str]) -> float:
        """Natural log of P(sentence), end token ``</s>`` included (``-inf`` if any factor is 0)."""
        padded = [BOS] * (self.n - 1) + self.known(sentence) + [EOS]
        total = 0.0
        for i in range(self.n - 1, len(padded)):
            p = self._prob(padded[i], tuple(padded[i - self.n + 1 : i]))
            if p == 0.0:
                return -math.inf
            total += math.log(p)
        return total

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> float:
        """exp of the mean negative log-likelihood per predicted token (each ``</s>`` counted)."""
        nll, tokens = 0.0, 0
        for sentence in sentences:
            nll -= self.logprob(sentence)
            tokens += len(sentence) + 1
        if tokens == 0:
            raise ValueError("perplexity of an empty set of sentences is undefined")
        return math.exp(nll / tokens)

    def sample(self, context: Sequence[str] = (), rng: random.Random | None = None) -> str:
        """Draw one token from P(. | context) without building the whole distribution."""
        rng = rng or random.Random()
        history = self._history(context)
        if self.smoothing == "add-k":
            # (c + k) / (c(h) + kV) mixes the counts (weight c(h)) with a uniform draw (weight kV).
            followers = self.counts[self.n].get(history)
            total = self._totals[self.n].get(history, 0)
            if followers and rng.random() * (total + self.k * len(self.vocab)) < total:
                return rng.choices(list(followers), weights=list(followers.values()))[0]
            return rng.choice(self.vocab)
        # Kneser-Ney is a mixture too: the discounted counts of the longest context, or else
        # (with probability d N(h) / c(h)) a draw from the next shorter context, down to uniform.
        for m in range(self.n, 0, -1):
            followers = self.counts[m].get(history[self.n - m :])
            if not followers:
                continue
            total = self._totals[m][history[self.n - m :]]
            if rng.random() >= self.discount * len(followers) / total:
                tokens = list(followers)
                return rng.choices(tokens, weights=[followers[t] - self.discount for t in tokens])[0]
        return rng.choice(self.vocab)

    def generate(self, seed: int | random.Random = 0, max_tokens: int = 40, context: Sequence[str] = ()) -> list[str]:
        """Sample tokens after ``context`` until ``</s>`` or ``max_tokens``; same seed, same text."""
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        history, out = list(context), []
        while len(out) < max_tokens:
            token = self.sample(history, rng)
            if token == EOS:
                break
            out.append(token)
            history.append(token)
        return out
