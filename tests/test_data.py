"""llmcourse.data: the Shakespeare corpus parsed, cleaned, cut and split by play."""

from __future__ import annotations

import re

import pytest

from llmcourse import data


def test_all_plays_and_genres_are_found() -> None:
    plays = data.plays()
    assert len(plays) == 38
    counts = {genre: len(data.plays(genre)) for genre in data.GENRES}
    assert counts == {"comedies": 8, "histories": 11, "problems": 5, "roman": 4, "romances": 4, "tragedies": 6}
    assert data.get_play("Hamlet") == data.get_play("hamlet")
    assert data.get_play("king-lear").genre == "tragedies"
    with pytest.raises(KeyError, match="known slugs"):
        data.get_play("the-two-noble-kinsmen")
    with pytest.raises(ValueError, match="unknown genre"):
        data.plays("sonnets")


def test_speeches_keep_words_and_drop_markup() -> None:
    speeches = data.speeches("hamlet")
    first = speeches[0]
    assert (first.speaker, first.text, first.act) == ("BERNARDO", "Who's there?", "ACT I")
    assert first.scene.startswith("SCENE I.")
    assert max(speeches, key=lambda s: len(s.lines)).speaker == "HAMLET"
    assert any(s.text.startswith("To be, or not to be") for s in speeches if s.speaker == "HAMLET")
    text = data.corpus_text()
    assert not re.search(r"[_*\\\[\]#]", text), "markdown or stage-direction markup leaked into the text"
    # Stage directions are dropped; the corpus itself has one unmarked "Enter FLAMINIUS." in Timon.
    directions = [line for line in text.splitlines() if re.match(r"(Exeunt|Exit|Enter [A-Z]{3,})", line)]
    assert len(directions) <= 1, directions


def test_play_text_with_and_without_speakers() -> None:
    with_names = data.play_text("macbeth")
    without = data.play_text("macbeth", speakers=False)
    assert "MACBETH:\n" in with_names and "MACBETH:" not in without
    assert len(without.split()) < len(with_names.split())
    assert "Tomorrow, and tomorrow, and tomorrow," in without or "To-morrow, and to-morrow, and to-morrow," in without


def test_passages_stay_inside_one_play_and_have_the_requested_length() -> None:
    selection = data.plays("tragedies")
    cut = data.passages(selection, words=50)
    assert {p.genre for p in cut} == {"tragedies"}
    assert all(25 <= len(p.text.split()) <= 50 for p in cut)
    total_words = sum(len(data.play_text(p, speakers=False).split()) for p in selection)
    assert total_words - 25 * len(selection) <= sum(len(p.text.split()) for p in cut) <= total_words
    with pytest.raises(ValueError):
        data.passages(selection, words=0)


def test_split_by_play_is_disjoint_stratified_and_deterministic() -> None:
    split = data.split_by_play(test_fraction=0.2, validation_fraction=0.1, seed=3)
    names = [{p.slug for p in part} for part in split]
    assert sum(map(len, names)) == 38 and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for genre in data.GENRES:
        assert any(p.genre == genre for p in split.train) and any(p.genre == genre for p in split.test)
    assert split == data.split_by_play(test_fraction=0.2, validation_fraction=0.1, seed=3)
    assert split.test != data.split_by_play(test_fraction=0.2, validation_fraction=0.1, seed=4).test
    with pytest.raises(ValueError):
        data.split_by_play(test_fraction=0.6, validation_fraction=0.5)
