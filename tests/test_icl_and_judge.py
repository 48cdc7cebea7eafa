"""llmcourse.icl (few-shot prompts, draws, answer parsing) and llmcourse.judge (verdicts, position bias)."""

from __future__ import annotations

import pytest

from llmcourse import chat, icl, judge


def test_few_shot_messages_are_earlier_exchanges():
    messages = icl.few_shot_messages("Is 'be To' in order?", [("Is 'To be' in order?", "yes"), ("Is 'or be' in order?", "no")],
                                     system="Answer with one word.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == "yes" and messages[-1]["content"] == "Is 'be To' in order?"
    text = chat.render_chatml(messages, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nAnswer with one word.<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    assert icl.few_shot_messages("q") == [{"role": "user", "content": "q"}]  # zero-shot


def test_draws_are_distinct_seeded_and_balanced_on_request():
    pool = list(range(20))
    draws = icl.draw_shots(pool, 4, 10, seed=3)
    assert len(draws) == 10 and all(len(set(d)) == 4 for d in draws)
    assert draws == icl.draw_shots(pool, 4, 10, seed=3) != icl.draw_shots(pool, 4, 10, seed=4)
    labels = [i % 2 for i in pool]
    balanced = icl.draw_shots(pool, 4, 50, seed=0, balanced_by=labels)
    assert all(sum(labels[x] for x in d) == 2 for d in balanced)
    assert len({tuple(labels[x] for x in d) for d in balanced}) > 1  # the order of the classes varies
    with pytest.raises(ValueError, match="multiple"):
        icl.draw_shots(pool, 3, 1, balanced_by=labels)
    with pytest.raises(ValueError, match="pool of 20"):
        icl.draw_shots(pool, 21, 1)


@pytest.mark.parametrize("reply, want", [("Yes.", 0), ("no", 1), ("The answer is: NO, it is shuffled", 1),
                                         ("yes or no", None), ("Maybe", None), ("yesterday", None)])
def test_parse_choice(reply, want):
    assert icl.parse_choice(reply, ["yes", "no"]) == want


def test_judge_prompt_and_verdicts():
    text = judge.judge_messages("Who wrote Hamlet?", "Shakespeare", "Marlowe")[0]["content"]
    assert "Answer A: Shakespeare" in text and "Answer B: Marlowe" in text and text.index("Answer A") < text.index("Answer B")
    assert [judge.parse_verdict(r) for r in ("A", "B.", "Answer B is better", "A or B", "Neither", "")] == [
        "A", "B", "B", None, None, None]


def test_position_bias_counts_by_hand():
    # pair 1: A then B -> the same answer both times; pair 2: A twice -> first position; pair 3: B twice;
    # pair 4: unreadable once; pair 5: B then A -> consistent (the other answer both times).
    result = judge.position_bias(["A", "A", "B", None, "B"], ["B", "A", "B", "A", "A"])
    assert result == judge.PositionBias(0.4, 0.2, 0.2, 0.2, 5)
    with pytest.raises(ValueError, match="each order"):
        judge.position_bias(["A"], [])
