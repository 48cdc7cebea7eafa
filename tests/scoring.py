"""Shared helpers of the grading tests: submissions built from an assignment's notebooks, one
`grade` call over a folder of them, which tests failed, and marks that match exactly.

A grading test builds its submissions from the instructor's solution (``answers``), changes
some cells (``edited``: a bug planted in the solution's own text, so the test notices when the
solution changes), puts them into the released notebook (``submission``) and grades them all
at once (``grade_notebooks``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from llmcourse.grading import EXERCISES_DIR, SOLUTIONS_DIR, GradeResult, grade
from llmcourse.grading.execution import ValidationReport, validate_notebook
from llmcourse.grading.notebooks import nbgrader_meta

_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def edited(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced by ``new``; fails when the solution no longer holds ``old``."""
    assert old in text, f"the solution no longer contains {old!r}: update this test"
    return text.replace(old, new)


class Assignment:
    """An assignment's solution (source) and released notebooks, and submissions made from them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.solution = SOLUTIONS_DIR / name / f"{name}.ipynb"
        self.release = EXERCISES_DIR / name / f"{name}.ipynb"

    def read_solution(self) -> NotebookNode:
        return nbformat.read(self.solution, as_version=4)

    def read_release(self) -> NotebookNode:
        return nbformat.read(self.release, as_version=4)

    @functools.cached_property
    def answers(self) -> dict[str, str]:
        """The solution cells of the instructor's notebook, as a learner would write them (no markers)."""
        return {
            nbgrader_meta(cell)["grade_id"]: "\n".join(
                line for line in cell.source.splitlines() if not any(marker in line for marker in _MARKERS)
            )
            for cell in self.read_solution().cells if nbgrader_meta(cell).get("solution")
        }

    @functools.cached_property
    def released(self) -> dict[str, str]:
        """The solution cells as released (``raise NotImplementedError()``)."""
        return {nbgrader_meta(cell)["grade_id"]: cell.source
                for cell in self.read_release().cells if nbgrader_meta(cell).get("solution")}

    def submission(self, changes: Mapping[str, str] | None = None, *, unfilled: Collection[str] = (),
                   edit: Callable[[NotebookNode], None] | None = None) -> NotebookNode:
        """The released notebook with the solution cells filled in and ``changes`` applied; the
        cells named in ``unfilled`` left as released; then ``edit`` applied to the notebook."""
        filled = {**self.answers, **(changes or {})}
        filled.update({grade_id: self.released[grade_id] for grade_id in unfilled})
        nb = self.read_release()
        for cell in nb.cells:
            if nbgrader_meta(cell).get("solution"):
                cell.source = filled[nbgrader_meta(cell)["grade_id"]]
        if edit is not None:
            edit(nb)
        return nb

    def grade_notebooks(self, folder: Path, notebooks: Mapping[str, NotebookNode],
                        **options: Any) -> dict[str, GradeResult]:
        """Write each notebook to ``folder/<name>.ipynb``, grade them all in one call (two workers
        unless ``options`` say otherwise) and return the results by name."""
        for name, nb in notebooks.items():
            nbformat.write(nb, folder / f"{name}.ipynb")
        results = grade(self.name, [folder], **{"progress": False, "jobs": 2, **options})
        return {Path(result.submission).stem: result for result in results}

    def validate(self, nb: NotebookNode, folder: Path) -> ValidationReport:
        """The visible tests' verdict on ``nb``, as a learner running `llmcourse validate` sees it."""
        path = folder / f"{self.name}.ipynb"
        nbformat.write(nb, path)
        return validate_notebook(path)


def failed(result: GradeResult) -> set[str]:
    """Names of the graded tests the submission did not pass."""
    return {test.name for test in result.tests if not test.passed}


def score_checker(points: Mapping[str, float]) -> Callable[[GradeResult, set[str]], None]:
    """A check that a result passed every test but ``failing``, with the marks ``points`` give."""
    max_score = float(sum(points.values()))

    def check_scores(result: GradeResult, failing: set[str]) -> None:
        assert result.error is None, result.error
        assert [test.name for test in result.tests] == list(points)
        assert failed(result) == failing, f"failed {sorted(failed(result))}, expected {sorted(failing)}"
        for test in result.tests:
            assert test.max_score == points[test.name]
            assert test.score == (0 if test.name in failing else points[test.name])
        assert result.score == max_score - sum(points[name] for name in failing)
        assert result.max_score == max_score

    return check_scores


def report_seconds(exercise: str, graded: Mapping[str, GradeResult]) -> dict[str, float]:
    """Print each submission's grading time (pytest -s shows it) and return them by name."""
    seconds = {name: result.seconds for name, result in graded.items()}
    print(f"\n{exercise} autograde seconds per submission (two at a time): "
          + ", ".join(f"{name} {s:.1f}" for name, s in sorted(seconds.items()))
          + f"; mean {sum(seconds.values()) / len(seconds):.1f}")
    return seconds
