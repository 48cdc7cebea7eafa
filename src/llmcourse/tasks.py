"""Classification tasks built from the corpus, the baselines a model must beat, and how predictions are scored.

- ``genre_task``: which genre (comedy, history, tragedy) a passage of a play comes from, split by play;
- ``word_order_task``: is a line in Shakespeare's word order or shuffled?
- ``majority_baseline`` and ``tfidf_baseline`` (TF-IDF features and a logistic regression);
- ``class_weights`` for imbalanced classes, and ``classification_metrics`` (accuracy, macro-F1).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from llmcourse import data, metrics

__all__ = [
    "Example",
    "Task",
    "genre_task",
    "word_order_task",
    "class_weights",
    "majority_baseline",
    "tfidf_baseline",
    "classification_metrics",
]


@dataclass(frozen=True)
class Example:
    """One labelled example: a text (or a pair of texts), its class index and the play it comes from."""

    text: str
    label: int
    play: str
    text_pair: str | None = None


class Task(NamedTuple):
    """A classification task split by play: no play gives examples to two splits."""

    name: str
    classes: tuple[str, ...]
    train: list[Example]
    validation: list[Example]
    test: list[Example]


def genre_task(words: int = 64, validation_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Task:
    """Is a passage from a comedy, a history or a tragedy? (``data.GENRE_CLASSES``)

    Passages of ``words`` words with no speaker names (they would give the play away). Roman
    plays count as tragedies; problem plays and romances are left out (``data.GENRE_OF_FOLDER``).
    Plays, not passages, are split (stratified by class), so the model is tested on plays it
    never saw. The classes are unbalanced (histories are the most common): see ``class_weights``.
    """
    chosen = [play for play in data.plays() if data.genre_class(play) is not None]
    split = data.split_by_play(chosen, test_fraction, validation_fraction, seed, stratify=data.genre_class)
    index = {name: i for i, name in enumerate(data.GENRE_CLASSES)}

    def examples(plays: list[data.Play]) -> list[Example]:
        return [Example(p.text, index[data.genre_class(p.play) or ""], p.play) for p in data.passages(plays, words)]

    return Task("genre", data.GENRE_CLASSES, examples(split.train), examples(split.validation), examples(split.test))


def word_order_task(
    n_train: int = 4000, n_validation: int = 500, n_test: int = 1000, min_words: int = 8,
    validation_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
) -> Task:
    """Is a line in Shakespeare's word order, or are its words shuffled? (classes ``("original", "shuffled")``)

    Each example is one line of at least ``min_words`` words, used once: with probability 1/2
    its words (with the punctuation attached to them) are put in a random different order.
    Both classes then have the same words, so a bag of words sees no difference at all
    between them; a model must read the order. Lines come from plays split as usual.
    """
    split = data.split_by_play(test_fraction=test_fraction, validation_fraction=validation_fraction, seed=seed)
    rng = random.Random(seed)

    def examples(plays: list[data.Play], n: int) -> list[Example]:
        lines = [(line, play.slug) for play in plays for speech in data.speeches(play) for line in speech.lines
                 if len(line.split()) >= min_words and len(set(line.split())) > 1]
        rng.shuffle(lines)
        result = []
        for line, slug in lines[:n]:
            if rng.random() < 0.5:
                result.append(Example(line, 0, slug))
                continue
            words = line.split()
            shuffled = words[:]
            while shuffled == words:
                rng.shuffle(shuffled)
            result.append(Example(" ".join(shuffled), 1, slug))
        return result

    return Task("word order", ("original", "shuffled"), examples(split.train, n_train),
                examples(split.validation, n_validation), examples(split.test, n_test))


def class_weights(labels: Sequence[int], n_classes: int) -> Tensor:
    """Weights ``n / (k * count)`` per class, as scikit-learn's ``class_weight="balanced"``.

    In a weighted cross-entropy every class then counts as much as the others in total.
    """
    counts = Counter(labels)
    missing = [c for c in range(n_classes) if counts[c] == 0]
    if missing:
        raise ValueError(f"classes {missing} have no examples: a weight for them is undefined")
    return torch.tensor([len(labels) / (n_classes * counts[c]) for c in range(n_classes)])


def majority_baseline(train: Sequence[Example], test: Sequence[Example]) -> list[int]:
    """Predict the most common training class for every test example."""
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    return [majority] * len(test)


def _joined(example: Example) -> str:
    return example.text if example.text_pair is None else f"{example.text} ||| {example.text_pair}"


def tfidf_baseline(train: Sequence[Example], test: Sequence[Example], ngram_range: tuple[int, int] = (1, 2),
                   min_df: int = 2, C: float = 1.0) -> list[int]:
    """TF-IDF of word n-grams, then a class-balanced logistic regression (scikit-learn).

    A pair of texts becomes one bag of words, as a reader who ignores word order would see it.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from threadpoolctl import threadpool_limits

    vectorizer = TfidfVectorizer(ngram_range=ngram_range, min_df=min_df, sublinear_tf=True)
    features = vectorizer.fit_transform([_joined(e) for e in train])
    model = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
    # One BLAS thread: this fit is small, and on a busy machine extra threads only wait for
    # each other (several times slower, measured); the result is the same.
    with threadpool_limits(limits=1):
        model.fit(features, [e.label for e in train])
    return [int(y) for y in model.predict(vectorizer.transform([_joined(e) for e in test]))]


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 (``llmcourse.metrics``, equal to scikit-learn)."""
    precision, recall, f1 = metrics.precision_recall_f1(y_true, y_pred, average="macro")
    return {"accuracy": metrics.accuracy(y_true, y_pred), "precision": precision, "recall": recall, "macro_f1": f1}
