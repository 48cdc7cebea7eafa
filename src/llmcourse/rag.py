"""Retrieval-augmented answers: questions with checkable answers, prompts that quote retrieved passages,
citations read back from the reply, and the scores that say whether the passages helped.

A model asked closed-book answers from what it remembers; given passages found by a retriever
(``llmcourse.retrieval``: MiniLM embeddings and a cosine top-k, no second index here), it can
copy the answer and say where it found it. The prompt numbers the passages ``[1]`` to ``[k]`` and
asks for the answer followed by the number of the passage used; ``parse_reply`` reads both back.

The questions are "Who says '...'?" about one line of a speech, answered by its speaker, so every
answer is checked by exact match after normalisation (``normalize``), and a citation is right
when the cited passage is a speech of that speaker. ``score_replies`` gives exact match, citation
accuracy, the share of replies that decline to answer, and the share that answer wrongly without
declining: **confident wrong answers**, the hallucinations retrieval is meant to cut.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from llmcourse import data
from llmcourse.retrieval import Document

__all__ = ["Question", "who_says_questions", "normalize", "rag_messages", "Reply", "parse_reply", "RagScores",
           "score_replies"]

#: What a reply says when it does not know; ``parse_reply`` treats it as declining to answer.
UNKNOWN = "unknown"
_INSTRUCTION = ("Answer with the name of the character only. After the name, write the number of the passage "
                "that shows it, in brackets, like [2]. If no passage shows it, answer 'unknown'.")
_CLOSED_BOOK = "Answer with the name of the character only. If you do not know, answer 'unknown'."


class Question(NamedTuple):
    """A question, its answer, and the document (a speech) that holds the answer."""

    text: str
    answer: str  # the speaker, as the corpus writes it (e.g. "HAMLET")
    document: Document


def who_says_questions(documents: Sequence[Document], n: int, seed: int = 0, min_words: int = 8) -> list[Question]:
    """``n`` questions "Who says '<line>'?", each about one line of a different document.

    A line qualifies when it has at least ``min_words`` words and appears in no other document
    (so the question has one right answer); documents are drawn at random with ``seed``.
    """
    counts: dict[str, int] = {}
    for document in documents:
        for line in set(document.text.split("\n")):
            counts[line.strip()] = counts.get(line.strip(), 0) + 1
    rng = random.Random(seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    questions = []
    for i in order:
        lines = [line.strip() for line in documents[i].text.split("\n")]
        usable = [line for line in lines if len(line.split()) >= min_words and counts[line] == 1]
        if usable:
            line = rng.choice(usable).rstrip(",;:")
            questions.append(Question(f"Who says '{line}'?", documents[i].speaker, documents[i]))
            if len(questions) == n:
                return questions
    raise ValueError(f"these documents give only {len(questions)} questions with lines of {min_words}+ words, not {n}")


def normalize(text: str) -> str:
    """Lower case, punctuation and the articles a, an, the removed, spaces collapsed (SQuAD's rule)."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(word for word in text.split() if word not in {"a", "an", "the"})


def _passage(number: int, document: Document) -> str:
    title = data.get_play(document.play).title
    return f"[{number}] {document.speaker}, in {title}, {document.act}, {document.scene.split('.')[0]}:\n{document.text}"


def rag_messages(question: str, passages: Sequence[Document] | None) -> list[dict[str, str]]:
    """The user turn that asks ``question``, closed-book (``passages`` None) or with numbered passages."""
    if passages is None:
        return [{"role": "user", "content": f"{_CLOSED_BOOK}\n\n{question}"}]
    if not passages:
        raise ValueError("no passages: pass None for a closed-book question")
    quoted = "\n\n".join(_passage(i + 1, document) for i, document in enumerate(passages))
    return [{"role": "user", "content": f"Passages from Shakespeare's plays:\n\n{quoted}\n\n{_INSTRUCTION}\n\n{question}"}]


class Reply(NamedTuple):
    """What a reply says: its answer (citations taken out), the passage numbers it cites, and whether it declined."""

    answer: str
    citations: list[int]
    declined: bool


def parse_reply(text: str) -> Reply:
    """Read a reply such as "Hamlet [2]": the answer is its first line without the bracketed numbers."""
    first = text.strip().split("\n")[0] if text.strip() else ""
    citations = [int(number) for number in re.findall(r"\[(\d+)\]", first)]
    answer = re.sub(r"\[\d+\]", " ", first).strip(" .,;:")
    return Reply(answer, citations, normalize(answer) in {"", UNKNOWN, "i dont know"})


class RagScores(NamedTuple):
    exact_match: float  # share of questions answered right
    citation_accuracy: float  # share of cited passages that are the answer's speaker's (nan when none cites)
    declined: float  # share of replies that decline to answer
    confident_wrong: float  # share of replies that answer, wrongly: hallucinations
    n: int


def score_replies(replies: Sequence[Reply], questions: Sequence[Question],
                  passages: Sequence[Sequence[Document]] | None = None) -> RagScores:
    """Scores of the replies to ``questions``; citations are checked against each question's ``passages``."""
    if len(replies) != len(questions) or (passages is not None and len(passages) != len(questions)):
        raise ValueError("need one reply (and one list of passages, when given) per question")
    if not questions:
        raise ValueError("no questions: the scores are undefined")
    right = declined = wrong = cited = cited_right = 0
    for i, (reply, question) in enumerate(zip(replies, questions)):
        correct = normalize(reply.answer) == normalize(question.answer)
        right += correct
        declined += reply.declined
        wrong += not reply.declined and not correct
        for number in reply.citations if passages is not None else []:
            cited += 1
            shown: Mapping[int, Document] = dict(enumerate(passages[i], start=1))  # type: ignore[index]
            cited_right += number in shown and normalize(shown[number].speaker) == normalize(question.answer)
    n = len(questions)
    return RagScores(right / n, cited_right / cited if cited else float("nan"), declined / n, wrong / n, n)
