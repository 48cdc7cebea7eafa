"""Shared helpers of the grading tests: submissions built from an assignment's notebooks, one
`grade` call over a folder of them, which tests failed, and marks that match exactly.

A grading test builds its submissions from the instructor's solution (``answers``), changes
some cells (``edited``: a bug planted in the solution's own text, so the test notices when the
solution changes), puts them into the released notebook (``submission``) and grades them all
at once (``grade_notebooks``). ``GradingSuite`` holds the tests every assignment's grading gets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar

import nbformat
import pytest
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

    def check_scores(result: GradeResult, failing: set[str], warnings: int = 0) -> None:
        assert result.error is None, result.error
        assert len(result.warnings) == warnings, result.warnings  # no cell stopped at a limit, unless expected
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


class GradingSuite:
    """The end-to-end grading tests of one assignment, all submissions graded in one ``grade`` call.

    A subclass named ``Test...`` in the assignment's test module says what to grade: the
    assignment, its points per test cell, ``mistakes`` (each a submission and the test cells it
    must fail, every other one passing with full marks), correct ``alternatives``, and a
    ``cheat`` (monkeypatching, answers made up for the visible inputs) that fools every visible
    test and must earn only ``cheat_passes``. The solution must get full marks and the released
    notebook, left unfilled, zero without an error.
    """

    assignment: ClassVar[Assignment]
    points: ClassVar[dict[str, float]]
    mistakes: ClassVar[dict[str, tuple[NotebookNode, set[str]]]]
    alternatives: ClassVar[dict[str, NotebookNode]]
    cheat: ClassVar[NotebookNode]
    cheat_passes: ClassVar[set[str]] = set()
    seconds_limit: ClassVar[float | None] = None  # per submission, two graded at a time

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "mistake" in metafunc.fixturenames:
            metafunc.parametrize("mistake", sorted(self.mistakes))
        if "alternative" in metafunc.fixturenames:
            metafunc.parametrize("alternative", sorted(self.alternatives))

    @pytest.fixture(scope="class")
    @classmethod
    def graded(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GradeResult]:
        """Every submission graded in one call with two workers; results by name."""
        notebooks = {
            "solution": cls.assignment.read_solution(),
            "unfilled": cls.assignment.read_release(),
            "cheat": cls.cheat,
            **cls.alternatives,
            **{name: nb for name, (nb, _) in cls.mistakes.items()},
        }
        return cls.assignment.grade_notebooks(tmp_path_factory.mktemp("submissions"), notebooks)

    def check(self, result: GradeResult, failing: set[str]) -> None:
        score_checker(self.points)(result, failing)

    def test_solution_gets_full_marks(self, graded: dict[str, GradeResult]) -> None:
        self.check(graded["solution"], set())

    def test_unfilled_release_gets_zero_without_error(self, graded: dict[str, GradeResult]) -> None:
        self.check(graded["unfilled"], set(self.points))
        assert graded["unfilled"].score == 0

    def test_each_mistake_loses_its_part_and_keeps_the_others(self, graded: dict[str, GradeResult], mistake: str) -> None:
        self.check(graded[mistake], self.mistakes[mistake][1])

    def test_correct_alternatives_get_full_marks(self, graded: dict[str, GradeResult], alternative: str) -> None:
        self.check(graded[alternative], set())

    def test_cheat_passes_the_visible_tests(self, tmp_path: Path) -> None:
        # The cheat is a fair test of the hidden tests only if it fools every visible one.
        report = self.assignment.validate(self.cheat, tmp_path)
        assert report.passed, report.summary()

    def test_cheat_earns_only_what_it_really_did(self, graded: dict[str, GradeResult]) -> None:
        self.check(graded["cheat"], set(self.points) - self.cheat_passes)

    def test_grading_time(self, graded: dict[str, GradeResult]) -> None:
        seconds = report_seconds(self.assignment.name, graded)
        assert len(seconds) == 3 + len(self.alternatives) + len(self.mistakes)
        if self.seconds_limit is not None:
            assert max(seconds.values()) < self.seconds_limit, f"grading one submission must take under {self.seconds_limit} s"
