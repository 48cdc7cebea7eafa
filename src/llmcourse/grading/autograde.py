"""Auto-grading submissions with nbgrader: find them, grade each one, report scores per test cell."""

from __future__ import annotations

import atexit
import multiprocessing
import re
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy.exc import SAWarning
from tqdm import tqdm

from .course import GradingCourse, GradingError, last_error_line, source_folder
from .notebooks import SubmissionError, check_assignment, graded_cells, load_notebook, restore_missing_cells
from .settings import CELL_TIMEOUT_S, SOLUTIONS_DIR


@dataclass
class Submission:
    """One learner's work: the notebooks to grade, under a label and a student id."""

    label: str  # what the instructor passed or sees: a file, or submitted/<student>/<assignment>
    student_id: str  # a safe, unique id for nbgrader
    notebooks: dict[str, Path] = field(default_factory=dict)  # assignment notebook name -> file
    error: str | None = None  # set when the submission cannot be graded at all


@dataclass
class TestResult:
    """The outcome of one graded cell."""

    name: str
    score: float
    max_score: float
    passed: bool


@dataclass
class GradeResult:
    """The outcome of grading one submission; ``error`` says why it could not be graded."""

    submission: str
    score: float
    max_score: float
    error: str | None = None
    tests: list[TestResult] = field(default_factory=list)
    seconds: float = 0.0
    restored_cells: list[str] = field(default_factory=list)
    feedback: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON record of the command line: submission, score, max_score, error, tests."""
        return {
            "submission": self.submission,
            "score": self.score,
            "max_score": self.max_score,
            "error": self.error,
            "tests": [asdict(test) for test in self.tests],
        }


def _safe_id(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "submission"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


def find_submissions(paths: Iterable[Path], assignment: str, notebook_names: Sequence[str]) -> list[Submission]:
    """Turn notebook files and folders into submissions.

    A file is one submission. A folder holds either loose ``.ipynb`` files (one submission
    each) or nbgrader's ``<student>/<assignment>/*.ipynb`` layout (one per student), or both.
    Raises FileNotFoundError for a path that does not exist and ValueError for a folder with
    nothing to grade: those are mistakes on the command line, not in a submission.
    """
    taken: set[str] = set()
    found: list[Submission] = []

    def loose(path: Path) -> Submission:
        submission = Submission(label=str(path), student_id=_safe_id(path.stem, taken))
        if path.suffix != ".ipynb":
            submission.error = f"not a notebook file: expected a .ipynb file, got '{path.name}'"
        elif len(notebook_names) == 1:
            submission.notebooks = {notebook_names[0]: path}
        elif path.stem in notebook_names:
            submission.notebooks = {path.stem: path}
        else:
            submission.error = (f"{assignment} has several notebooks ({', '.join(notebook_names)}): "
                                f"name the file after one of them, or submit the whole folder")
        return submission

    for path in paths:
        if path.is_file():
            found.append(loose(path))
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"no such file or folder: {path}")
        before = len(found)
        # submitted/ holds student folders; submitted/<student> holds the assignment's folder.
        if (path / assignment).is_dir():
            student_dirs = [path]
        else:
            student_dirs = sorted(p for p in path.iterdir() if (p / assignment).is_dir())
        for student_dir in student_dirs:
            folder = student_dir / assignment
            notebooks = {p.stem: p for p in sorted(folder.glob("*.ipynb")) if not p.name.startswith(".")}
            submission = Submission(label=str(folder), student_id=_safe_id(student_dir.name, taken),
                                    notebooks=notebooks)
            if not notebooks:
                submission.error = f"no .ipynb file in {folder}"
            found.append(submission)
        found.extend(loose(p) for p in sorted(path.glob("*.ipynb")) if p.is_file() and not p.name.startswith("."))
        if len(found) == before:
            raise ValueError(f"nothing to grade in {path}: expected .ipynb files or <student>/{assignment}/ folders")
    return found


def _read_scores(course: GradingCourse, student_id: str) -> tuple[float, list[TestResult]]:
    order = {name: i for i, (name, _) in enumerate(course.test_cells)}
    tests: list[TestResult] = []
    with Gradebook(course.db_url) as gradebook:
        submitted = gradebook.find_submission(course.assignment, student_id)
        score = float(submitted.score)
        for notebook in submitted.notebooks:
            for grade in notebook.grades:
                earned = float(grade.score or 0.0)
                top = float(grade.max_score)
                tests.append(TestResult(name=grade.name, score=earned, max_score=top, passed=top > 0 and earned >= top))
    tests.sort(key=lambda test: order.get(test.name, len(order)))
    return score, tests


FAILURE_HINTS = {  # what nbgrader's own words mean for the instructor
    "DeadKernelError": " (the submission's code stopped or crashed the Python kernel)",
    "IOPub": " (the submission's code broke the kernel's output channel)",
    "UnresponsiveKernel": " (the kernel stopped answering, e.g. an endless loop that ignores interrupts)",
}


def grade_submission(course: GradingCourse, submission: Submission, feedback_dir: Path | None = None) -> GradeResult:
    """Grade one submission in its own folder of ``course`` and return its result; never raises for bad input.

    The submission's notebooks are checked, deleted graded cells put back, and the result
    written to ``submitted/<student>/<assignment>/``; nbgrader's autograde then runs it in a
    fresh kernel with its working directory in ``autograded/<student>/<assignment>/``.
    """
    started = time.perf_counter()
    result = GradeResult(submission=submission.label, score=0.0, max_score=course.max_score, error=submission.error)
    if result.error:
        return result
    assert course.api is not None
    folder = course.root / "submitted" / submission.student_id / course.assignment
    try:
        unknown = sorted(set(submission.notebooks) - set(course.release_notebooks))
        if unknown:
            raise SubmissionError(f"notebook '{unknown[0]}' is not part of {course.assignment} "
                                  f"(its notebooks: {', '.join(course.release_notebooks)})")
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in submission.notebooks.items():
            nb = load_notebook(path)
            check_assignment(nb, course.release_notebooks[name], course.assignment)
            result.restored_cells += restore_missing_cells(nb, course.release_notebooks[name])
            nbformat.write(nb, folder / f"{name}.ipynb")
    except SubmissionError as error:
        result.error = str(error)
        result.seconds = time.perf_counter() - started
        return result

    with warnings.catch_warnings():
        # nbgrader 0.9.6 with SQLAlchemy 2.x warns "Object ... not in session" on every new submission.
        warnings.simplefilter("ignore", SAWarning)
        outcome = course.api.autograde(course.assignment, submission.student_id, force=True, create=True)
    if not outcome["success"]:
        cause = last_error_line(outcome.get("log", "") + "\n" + outcome.get("error", ""))
        hint = next((text for key, text in FAILURE_HINTS.items() if key in cause), "")
        result.error = f"autograde failed: {cause}{hint}"
    else:
        try:
            result.score, result.tests = _read_scores(course, submission.student_id)
        except MissingEntry:
            result.error = "autograde finished but the gradebook has no scores for this submission"
    if result.error:
        result.score = 0.0

    if feedback_dir is not None and not result.error:
        result.feedback = _write_feedback(course, submission, feedback_dir)
    result.seconds = time.perf_counter() - started
    return result


def _write_feedback(course: GradingCourse, submission: Submission, feedback_dir: Path) -> list[Path]:
    assert course.api is not None
    outcome = course.api.generate_feedback(course.assignment, submission.student_id, force=True)
    if not outcome["success"]:
        cause = last_error_line(outcome.get("log", "") + "\n" + outcome.get("error", ""))
        warnings.warn(f"no feedback page for {submission.label}: {cause}", stacklevel=2)
        return []
    feedback_dir.mkdir(parents=True, exist_ok=True)
    written = []
    pages = sorted((course.root / "feedback" / submission.student_id / course.assignment).glob("*.html"))
    for page in pages:
        name = submission.student_id if len(pages) == 1 else f"{submission.student_id}-{page.stem}"
        target = feedback_dir / f"{name}.html"
        shutil.copyfile(page, target)
        written.append(target)
    return written


def _grade_safely(course: GradingCourse, submission: Submission, feedback_dir: Path | None) -> GradeResult:
    try:
        return grade_submission(course, submission, feedback_dir)
    except Exception as error:  # the grader must report, not crash, whatever a submission does
        return GradeResult(submission=submission.label, score=0.0, max_score=course.max_score,
                           error=f"grader error: {type(error).__name__}: {error}")


_WORKER_COURSE: GradingCourse | None = None


def _start_worker(assignment: str, solutions_dir: Path, cell_timeout: int) -> None:
    # Each worker process grades in a course (and gradebook) of its own; the temporary folder
    # is removed when the process exits.
    global _WORKER_COURSE
    _WORKER_COURSE = GradingCourse(assignment, solutions_dir, cell_timeout=cell_timeout).__enter__()
    atexit.register(_WORKER_COURSE.__exit__, None, None, None)


def _grade_in_worker(submission: Submission, feedback_dir: Path | None) -> GradeResult:
    assert _WORKER_COURSE is not None, "worker not initialised"
    return _grade_safely(_WORKER_COURSE, submission, feedback_dir)


def grade(assignment: str, paths: Sequence[Path], feedback_dir: Path | None = None,
          solutions_dir: Path = SOLUTIONS_DIR, progress: bool = True, jobs: int = 1,
          cell_timeout: int = CELL_TIMEOUT_S) -> list[GradeResult]:
    """Grade every submission found in ``paths`` against ``solutions_dir/<assignment>``.

    With ``jobs`` > 1, that many processes grade in parallel, each in its own course. A cell
    running longer than ``cell_timeout`` seconds is interrupted and counts as failed.
    Results come in the order the submissions were found.
    """
    sources = sorted(source_folder(assignment, solutions_dir).glob("*.ipynb"))
    max_score = sum(points for path in sources for _, points in graded_cells(nbformat.read(path, as_version=4)))
    submissions = find_submissions(paths, assignment, [path.stem for path in sources])
    todo = [i for i, submission in enumerate(submissions) if submission.error is None]
    results: dict[int, GradeResult] = {}
    bar = tqdm(total=len(todo), desc=f"grading {assignment}", unit="submission",
               disable=not progress or len(todo) < 2)
    workers = max(1, min(jobs, len(todo)))
    if todo and workers == 1:
        with GradingCourse(assignment, solutions_dir, cell_timeout=cell_timeout) as course:
            for i in todo:
                results[i] = _grade_safely(course, submissions[i], feedback_dir)
                bar.update()
    elif todo:
        context = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                     initargs=(assignment, solutions_dir, cell_timeout)) as pool:
                futures = {pool.submit(_grade_in_worker, submissions[i], feedback_dir): i for i in todo}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
        except BrokenProcessPool as error:
            raise GradingError(f"a grading worker died ({error}); run again with jobs=1 to see why") from None
    bar.close()
    for i, submission in enumerate(submissions):
        if i not in results:
            results[i] = GradeResult(submission=submission.label, score=0.0, max_score=max_score,
                                     error=submission.error)
    return [results[i] for i in range(len(submissions))]
