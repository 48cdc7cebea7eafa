"""Reading submitted notebooks defensively, and the nbgrader cell bookkeeping around them."""

from __future__ import annotations

import copy
import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

MAX_NOTEBOOK_BYTES = 50 * 1024 * 1024


class SubmissionError(Exception):
    """A submitted file that cannot be graded; the message says why, in words for a person."""


def load_notebook(path: Path) -> NotebookNode:
    """Read ``path`` as a version-4 notebook, or raise SubmissionError saying what is wrong."""
    if path.suffix != ".ipynb":
        raise SubmissionError(f"not a notebook file: expected a .ipynb file, got '{path.name}'")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise SubmissionError(f"cannot read the file: {error.strerror}") from None
    if size == 0:
        raise SubmissionError("empty file: the notebook was not saved, or was truncated")
    if size > MAX_NOTEBOOK_BYTES:
        raise SubmissionError(f"file too large ({size / 2**20:.0f} MiB): clear the outputs and submit again")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("not a notebook: the file is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SubmissionError(
            f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg} "
            "(the file is damaged; open it in Jupyter and save it again)"
        ) from None
    if not isinstance(data, dict) or "cells" not in data or "nbformat" not in data:
        raise SubmissionError("not a Jupyter notebook: the JSON has no 'cells' and 'nbformat' fields")
    try:
        with warnings.catch_warnings():  # nbformat repairs missing or duplicate cell ids, with a warning
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4)
            nbformat.validate(nb)
    except Exception as error:  # nbformat raises several types for malformed notebooks
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SubmissionError(f"not a valid Jupyter notebook: {first_line}") from None
    return nb


def nbgrader_meta(cell: NotebookNode) -> dict[str, Any]:
    """Return the cell's nbgrader metadata, or an empty dict."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def tracked_id(cell: NotebookNode) -> str | None:
    """Return the grade_id of a cell nbgrader tracks (graded, solution or locked), else None."""
    meta = nbgrader_meta(cell)
    if meta.get("grade") or meta.get("solution") or meta.get("locked"):
        grade_id = meta.get("grade_id")
        return grade_id if isinstance(grade_id, str) and grade_id else None
    return None


def graded_cells(nb: NotebookNode) -> list[tuple[str, float]]:
    """Return (grade_id, points) of the graded cells, in notebook order."""
    return [
        (nbgrader_meta(cell)["grade_id"], float(nbgrader_meta(cell).get("points", 0)))
        for cell in nb.cells
        if nbgrader_meta(cell).get("grade") and tracked_id(cell)
    ]


def answer_ids(nb: NotebookNode) -> set[str]:
    """Return the grade_ids of the cells that identify an assignment: graded and solution cells."""
    return {
        tracked_id(cell) for cell in nb.cells
        if tracked_id(cell) and (nbgrader_meta(cell).get("grade") or nbgrader_meta(cell).get("solution"))
    }


def check_assignment(nb: NotebookNode, release: NotebookNode, assignment: str) -> None:
    """Raise SubmissionError unless ``nb`` is a copy of the assignment whose release is ``release``."""
    theirs = {tracked_id(cell) for cell in nb.cells if tracked_id(cell)}
    if not theirs:
        raise SubmissionError(
            f"no nbgrader cells: this is not a copy of the {assignment} notebook "
            f"(start from exercises/{assignment}/ and keep its cells)"
        )
    if not theirs & answer_ids(release):
        sample = ", ".join(sorted(theirs)[:3])
        raise SubmissionError(
            f"wrong assignment: none of this notebook's graded or answer cells ({sample}...) "
            f"belong to {assignment}"
        )


def restore_missing_cells(nb: NotebookNode, release: NotebookNode) -> list[str]:
    """Put back, in place, the tracked cells of ``release`` that ``nb`` lacks; return their ids.

    Each one goes right after the nearest tracked cell before it that is still there. nbgrader
    then treats it like any released cell: test cells get their hidden tests restored from the
    gradebook. (nbgrader's own ``add_missing_cells`` fails when a deleted test cell follows a
    locked cell that is not graded; doing it here first avoids that.)
    """
    restored: list[str] = []
    used_ids = {cell.get("id") for cell in nb.cells}
    anchor = -1
    for cell in release.cells:
        grade_id = tracked_id(cell)
        if grade_id is None:
            continue
        position = next((i for i, c in enumerate(nb.cells) if tracked_id(c) == grade_id), None)
        if position is not None:
            anchor = position
            continue
        missing = copy.deepcopy(cell)
        if missing.get("id") in used_ids:
            missing["id"] = uuid.uuid4().hex[:8]
        used_ids.add(missing.get("id"))
        nb.cells.insert(anchor + 1, missing)
        anchor += 1
        restored.append(grade_id)
    return restored


VOLATILE_CELL_METADATA = {"execution", "collapsed", "scrolled", "ExecuteTime", "jupyter", "trusted"}


def comparable(nb: NotebookNode) -> list[dict[str, Any]]:
    """Return what matters in a released notebook: each cell's type, source and stable metadata."""
    return [
        {
            "cell_type": cell.cell_type,
            "source": cell.source,
            "metadata": {k: v for k, v in cell.metadata.items() if k not in VOLATILE_CELL_METADATA},
        }
        for cell in nb.cells
    ]
