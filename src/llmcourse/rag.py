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

A small model may not follow the instruction to write "NAME [n]". It can still be asked the
reading question as a choice, the way evaluation harnesses ask multiple choice: which numbered
passage has the quoted line? ``locate_messages`` asks it, ``passage_options`` lists the answers to
score (``llmcourse.sft.choose_answers``), and ``reply_from_choice`` turns the chosen number into
the reply it stands for: that passage's speaker, citing it. A citation makes an answer checkable:
``verify`` keeps a reply only when the passage it cites holds the quoted line, and declines otherwise.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from typing import NamedTuple

from llmcourse import data
from llmcourse.retrieval import Document

__all__ = ["Question", "who_says_questions", "normalize", "rag_messages", "Reply", "parse_reply", "locate_messages",
           "passage_options", "reply_from_choice", "verify", "RagScores", "score_replies"]

#: What a reply says when it does not know; ``parse_reply`` treats it as declining to answer.
UNKNOWN = "unknown"
_INSTRUCTION = ("Answer with the name of the character only. After the name, write the number of the passage "
                "that shows it, in brackets, like [2]. If no passage shows it, answer 'unknown'.")
_CLOSED_BOOK = "Answer with the name of the character only. If you do not know, answer 'unknown'."


class Question(NamedTuple):
    """A question, its answer, the document (a speech) that holds the answer, and the line it quotes."""

    text: str
    answer: str  # the speaker, as the corpus writes it (e.g. "HAMLET")
    document: Document
    line: str = ""  # the quoted line, as it stands in the document


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
            questions.append(Question(f"Who says '{line}'?", documents[i].speaker, documents[i], line))
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


def locate_messages(question: Question, passages: Sequence[Document]) -> list[dict[str, str]]:
    """The user turn that shows the numbered passages and asks which one has the question's line."""
    if not passages:
        raise ValueError("no passages to choose from")
    if not question.line:
        raise ValueError("the question quotes no line (build it with who_says_questions)")
    quoted = "\n\n".join(_passage(i + 1, document) for i, document in enumerate(passages))
    return [{"role": "user", "content": f"Passages from Shakespeare's plays:\n\n{quoted}\n\n"
                                        f"Which passage has the line '{question.line}'? Answer with its number only."}]


def passage_options(k: int) -> list[str]:
    """The answers "1" to "k" that ``locate_messages`` allows, to score as options."""
    if k < 1:
        raise ValueError(f"need at least one passage, got {k}")
    return [str(number) for number in range(1, k + 1)]


def reply_from_choice(choice: int, passages: Sequence[Document]) -> Reply:
    """The reply that choosing option ``choice`` (0-based, as ``choose_answers`` returns) stands for."""
    if not 0 <= choice < len(passages):
        raise ValueError(f"choice {choice} is not one of the {len(passages)} passages")
    return Reply(passages[choice].speaker, [choice + 1], False)


def verify(reply: Reply, question: Question, passages: Sequence[Document]) -> Reply:
    """``reply`` if it cites a shown passage that holds the question's line, else a reply that declines.

    The check reads the passages, not the model: an answer whose source does not say what was
    asked about is withheld, whatever the model's confidence.
    """
    if reply.declined:
        return reply
    cited = [passages[n - 1] for n in reply.citations if 1 <= n <= len(passages)]
    if question.line and any(question.line in document.text for document in cited):
        return reply
    return Reply(UNKNOWN, [], True)


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
        shown = passages[i] if passages is not None else []
        for number in reply.citations if passages is not None else []:
            cited += 1
            cited_right += 1 <= number <= len(shown) and normalize(shown[number - 1].speaker) == normalize(question.answer)
    n = len(questions)
    return RagScores(right / n, cited_right / cited if cited else float("nan"), declined / n, wrong / n, n)
