"""llmcourse.rag: questions with one right answer, prompts that quote passages, replies read back, scores."""

from __future__ import annotations

import math

import pytest

from llmcourse import rag
from llmcourse.retrieval import Document, speech_documents


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return speech_documents(["hamlet", "macbeth"], max_words=80)


def test_questions_have_one_right_answer(documents):
    questions = rag.who_says_questions(documents, 50, seed=1)
    assert len(questions) == 50 and len({q.document for q in questions}) == 50
    for question in questions:
        line = question.text.removeprefix("Who says '").removesuffix("'?")
        assert line == question.line and len(line.split()) >= 8 and line in question.document.text
        holders = [d for d in documents if line in d.text]
        assert {d.speaker for d in holders} == {question.answer}
    assert rag.who_says_questions(documents, 50, seed=1) == questions  # the seed fixes the draw
    with pytest.raises(ValueError, match="only"):
        rag.who_says_questions(documents[:3], 50)


def test_normalize_follows_squad():
    assert rag.normalize("  The Ghost.") == "ghost"
    assert rag.normalize("LADY MACBETH") == rag.normalize("Lady Macbeth!") == "lady macbeth"
    assert rag.normalize("an apple, a pear") == "apple pear"


def test_prompts_number_the_passages(documents):
    closed = rag.rag_messages("Who says 'x'?", None)
    assert len(closed) == 1 and closed[0]["role"] == "user" and "[1]" not in closed[0]["content"]
    prompt = rag.rag_messages("Who says 'x'?", documents[:3])[0]["content"]
    for number, document in enumerate(documents[:3], start=1):
        assert f"[{number}] {document.speaker}, in The Tragedy of Hamlet" in prompt or f"[{number}] {document.speaker}," in prompt
        assert document.text in prompt
    assert "[4]" not in prompt and prompt.endswith("Who says 'x'?")
    with pytest.raises(ValueError, match="closed-book"):
        rag.rag_messages("Who says 'x'?", [])


@pytest.mark.parametrize("text, want", [
    ("Hamlet [2]", rag.Reply("Hamlet", [2], False)),
    ("Horatio. [1] [3]\nBecause he speaks of...", rag.Reply("Horatio", [1, 3], False)),
    ("[2] Lady Macbeth", rag.Reply("Lady Macbeth", [2], False)),
    ("unknown", rag.Reply("unknown", [], True)),
    ("I don't know.", rag.Reply("I don't know", [], True)),
    ("", rag.Reply("", [], True)),
])
def test_parse_reply(text, want):
    assert rag.parse_reply(text) == want


def test_scores_by_hand(documents):
    hamlet = next(d for d in documents if d.speaker == "HAMLET")
    horatio = next(d for d in documents if d.speaker == "HORATIO")
    questions = [rag.Question("q1", "HAMLET", hamlet), rag.Question("q2", "HORATIO", horatio),
                 rag.Question("q3", "HAMLET", hamlet), rag.Question("q4", "HORATIO", horatio)]
    passages = [[horatio, hamlet], [horatio, hamlet], [hamlet], [hamlet]]
    replies = [rag.parse_reply(text) for text in ("Hamlet [2]", "Horatio [2]", "Ophelia [1]", "unknown")]
    scores = rag.score_replies(replies, questions, passages)
    # right: q1, q2; citations: [2] of q1 right, [2] of q2 wrong (Hamlet's), [1] of q3 right; one declined,
    # one confident wrong answer (q3).
    assert scores == rag.RagScores(0.5, 2 / 3, 0.25, 0.25, 4)
    closed = rag.score_replies(replies, questions)
    assert closed.exact_match == 0.5 and math.isnan(closed.citation_accuracy)
    with pytest.raises(ValueError, match="one reply"):
        rag.score_replies(replies[:2], questions)


def test_locate_asks_for_the_passage_with_the_line(documents):
    question = rag.who_says_questions(documents, 1, seed=3)[0]
    shown = [documents[0], question.document, documents[1]]
    prompt = rag.locate_messages(question, shown)[0]["content"]
    for number, document in enumerate(shown, start=1):
        assert f"[{number}] {document.speaker}," in prompt and document.text in prompt
    assert "[4]" not in prompt and f"'{question.line}'" in prompt and prompt.endswith("number only.")
    assert rag.passage_options(3) == ["1", "2", "3"]
    assert rag.reply_from_choice(1, shown) == rag.Reply(question.answer, [2], False)
    with pytest.raises(ValueError, match="no passages"):
        rag.locate_messages(question, [])
    with pytest.raises(ValueError, match="quotes no line"):
        rag.locate_messages(rag.Question("q", "HAMLET", documents[0]), shown)
    with pytest.raises(ValueError, match="not one of the 3"):
        rag.reply_from_choice(3, shown)
    with pytest.raises(ValueError, match="at least one"):
        rag.passage_options(0)


def test_verify_keeps_only_replies_whose_source_holds_the_line(documents):
    question = rag.who_says_questions(documents, 1, seed=4)[0]
    other = next(d for d in documents if question.line not in d.text and d.speaker != question.answer)
    shown = [other, question.document]
    declined = rag.Reply(rag.UNKNOWN, [], True)
    right = rag.Reply(question.answer, [2], False)
    assert rag.verify(right, question, shown) == right
    # the right name with the wrong source, a wrong name from the wrong source, a number not shown, no citation
    for reply in (rag.Reply(question.answer, [1], False), rag.Reply(other.speaker, [1], False),
                  rag.Reply(question.answer, [3], False), rag.Reply(question.answer, [], False)):
        assert rag.verify(reply, question, shown) == declined
    # a citation list that includes the right source is kept; a declined reply stays declined
    assert rag.verify(rag.Reply(question.answer, [1, 2], False), question, shown).citations == [1, 2]
    assert rag.verify(declined, question, shown) == declined
    scores = rag.score_replies([rag.verify(rag.Reply(other.speaker, [1], False), question, shown)], [question], [shown])
    assert scores.confident_wrong == 0 and scores.declined == 1
