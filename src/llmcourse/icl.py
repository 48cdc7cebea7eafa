"""In-context learning: a task taught by examples in the prompt, with no weight changed.

A few-shot prompt shows ``k`` solved examples before the question. With a chat model each shot is
an earlier exchange, a user turn and the assistant's answer (``few_shot_messages``), so the model
sees the format it must answer in. The answer is then read in one of two ways, as evaluation
harnesses do:

- **scoring the options**: the log-likelihood of each allowed answer as the reply
  (``llmcourse.sft.choose_answers``), optionally per token when the options differ in length;
  the model cannot answer off the list;
- **free generation**: the model writes a reply, and ``parse_choice`` finds which option it names
  (None when it names none, or several).

The score depends on which examples are shown and in which order, so an honest figure is a
spread over several draws (``draw_shots``), not one prompt's accuracy.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["few_shot_messages", "draw_shots", "parse_choice"]

_T = TypeVar("_T")


def few_shot_messages(question: str, shots: Sequence[tuple[str, str]] = (),
                      system: str | None = None) -> list[dict[str, str]]:
    """The conversation that asks ``question`` after the ``(question, answer)`` shots, each an earlier exchange.

    ``system``, when given, opens the conversation (otherwise the chat template's default applies).
    """
    messages = [{"role": "system", "content": system}] if system is not None else []
    for shot_question, shot_answer in shots:
        messages += [{"role": "user", "content": shot_question}, {"role": "assistant", "content": shot_answer}]
    return messages + [{"role": "user", "content": question}]


def draw_shots(pool: Sequence[_T], k: int, n_draws: int, seed: int = 0, balanced_by: Sequence[int] | None = None) -> list[list[_T]]:
    """``n_draws`` lists of ``k`` distinct examples from ``pool``, each in a random order.

    With ``balanced_by`` (a class index per pool item) each draw takes ``k // n_classes`` of every
    class (``k`` must be a multiple), so a draw's label counts cannot be what is measured; the order
    is still random, which is what the spread over draws shows.
    """
    if k < 0 or k > len(pool):
        raise ValueError(f"cannot draw {k} shots from a pool of {len(pool)}")
    rng = random.Random(seed)
    draws = []
    for _ in range(n_draws):
        if balanced_by is None:
            draw = rng.sample(list(pool), k)
        else:
            classes = sorted(set(balanced_by))
            if k % len(classes):
                raise ValueError(f"k={k} is not a multiple of the {len(classes)} classes: draws cannot be balanced")
            draw = [item for c in classes
                    for item in rng.sample([x for x, label in zip(pool, balanced_by) if label == c], k // len(classes))]
            rng.shuffle(draw)
        draws.append(draw)
    return draws


def parse_choice(reply: str, options: Sequence[str]) -> int | None:
    """The index of the one option the reply names as a whole word (case ignored), else None."""
    words = set(re.findall(r"[a-z0-9']+", reply.lower()))
    named = [i for i, option in enumerate(options) if option.lower() in words]
    return named[0] if len(named) == 1 else None
