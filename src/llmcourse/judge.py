"""A language model as judge: which of two answers is better, and how much the verdict follows position.

An LLM judge reads a question and two answers, labelled A and B, and names the better one. Judges
have known biases; the first to measure is **position bias**: ask again with the two answers
swapped. A judge that looks only at the content names the same answer both times; one that
answers "A" (or "B") whatever is there follows the position. ``position_bias`` counts the three
outcomes over pairs judged in both orders.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["judge_messages", "parse_verdict", "PositionBias", "position_bias"]

_PROMPT = ("Which answer to the question is better? Reply with the letter A or B only.\n\n"
           "Question: {question}\n\nAnswer A: {a}\n\nAnswer B: {b}")


def judge_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The user turn that asks which of the two answers is better, A or B."""
    return [{"role": "user", "content": _PROMPT.format(question=question, a=answer_a, b=answer_b)}]


def parse_verdict(reply: str) -> str | None:
    """"A" or "B" when the reply names exactly one of them as a letter on its own, else None."""
    letters = set(re.findall(r"\b([AB])\b", reply.strip()))
    return letters.pop() if len(letters) == 1 else None


class PositionBias(NamedTuple):
    consistent: float  # the same answer preferred in both orders
    first: float  # "A" both times: the first position wins, whatever is there
    second: float  # "B" both times
    unparsed: float  # a verdict that could not be read, in either order
    n: int


def position_bias(verdicts: Sequence[str | None], swapped: Sequence[str | None]) -> PositionBias:
    """Outcomes over pairs judged as (x, y) (``verdicts``) and again as (y, x) (``swapped``)."""
    if len(verdicts) != len(swapped) or not verdicts:
        raise ValueError("need one verdict in each order for every pair, and at least one pair")
    counts = {"consistent": 0, "first": 0, "second": 0, "unparsed": 0}
    for original, reverse in zip(verdicts, swapped):
        if original is None or reverse is None:
            counts["unparsed"] += 1
        elif original != reverse:  # A then B: the same answer (x) both times
            counts["consistent"] += 1
        else:
            counts["first" if original == "A" else "second"] += 1
    n = len(verdicts)
    return PositionBias(counts["consistent"] / n, counts["first"] / n, counts["second"] / n, counts["unparsed"] / n, n)
