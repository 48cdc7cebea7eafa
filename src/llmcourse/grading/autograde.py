"""Auto-grading submissions with nbgrader: find them, grade each one, report scores per test cell.

``grade`` is the whole pipeline: find submissions (``submissions``), skip those already graded
and unchanged (``resume``), grade the rest in one process (``grader``) or in ``jobs`` worker
processes (``pool``, each with its own course, gradebook and sandbox), and return one
``GradeResult`` (``results``) per submission, in order. Whatever a submission does, it gets a
row: a score (the marks it earned) and, when something went wrong, an error in words.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import nbformat
from tqdm import tqdm

from .course import GradingCourse, source_folder
from .grader import grade_safely
from .notebooks import graded_cells
from .pool import grade_in_workers
from .results import GradeResult
from .resume import append_result, cache_key, load_results, reusable, source_hash
from .sandbox import cpu_threads, probe
from .settings import SOLUTIONS_DIR, assignment_limits
from .submissions import find_submissions

__all__ = ["GRADER_VERSION", "SandboxWarning", "grade", "test_names"]

# Part of every cache key: a result graded by an older grader (other checks, fewer fields) is graded again.
GRADER_VERSION = "2"


class SandboxWarning(UserWarning):
    """Grading runs without part of its sandbox (no bubblewrap, or no cgroups)."""


def grade(assignment: str, paths: Sequence[Path], feedback_dir: Path | None = None,
          solutions_dir: Path = SOLUTIONS_DIR, progress: bool = True, jobs: int = 1,
          cell_timeout: int | None = None, notebook_timeout: int | None = None,
          cache: Path | None = None, force: bool = False, keep_graded: Path | None = None) -> list[GradeResult]:
    """Grade every submission found in ``paths`` against ``solutions_dir/<assignment>``.

    With ``jobs`` > 1, that many worker processes grade in parallel, each in its own course.
    A cell running longer than ``cell_timeout`` seconds is interrupted and fails; a notebook
    running longer than ``notebook_timeout`` seconds is stopped, its remaining cells failing.
    Left out, both come from the assignment (``settings.assignment_limits``: 60 s and 300 s
    unless its notebooks ask for more). With ``cache`` (a JSON-lines file), submissions graded
    before with the same source, limits and content are not graded again (unless ``force``),
    and new results are added to it. With ``keep_graded``, the graded notebooks of each submission are
    kept in ``keep_graded/<student>/<assignment>/`` (``grader.grade_submission``).
    Results come in the order the submissions were found.
    """
    sources = sorted(source_folder(assignment, solutions_dir).glob("*.ipynb"))
    source_notebooks = [nbformat.read(path, as_version=4) for path in sources]
    max_score = sum(points for nb in source_notebooks for _, points in graded_cells(nb))
    own_cell, own_notebook = assignment_limits(source_notebooks)
    cell_timeout = own_cell if cell_timeout is None else cell_timeout
    notebook_timeout = own_notebook if notebook_timeout is None else notebook_timeout
    submissions = find_submissions(paths, assignment, [path.stem for path in sources])
    feedback_dir = feedback_dir.resolve() if feedback_dir is not None else None
    settings = (f"{GRADER_VERSION}\0{assignment}\0{source_hash(assignment, solutions_dir)}\0{cell_timeout}"
                f"\0{notebook_timeout}")
    keys = [cache_key(settings, submission) for submission in submissions]
    done = load_results(cache) if cache is not None and not force else {}
    results: dict[int, GradeResult] = {}
    for i, submission in enumerate(submissions):
        record = done.get(keys[i])
        kept = keep_graded is None or (keep_graded / submission.student_id / assignment).is_dir()
        if record is not None and kept and reusable(record, feedback_dir):
            results[i] = GradeResult.from_record({**record, "submission": submission.label, "cached": True})
    todo = [i for i, submission in enumerate(submissions) if i not in results and submission.error is None]

    support = probe()
    if todo and support.warning():
        warnings.warn(support.warning() or "", SandboxWarning, stacklevel=2)
    bar = tqdm(total=len(todo), desc=f"grading {assignment}", unit="submission",
               disable=not progress or len(todo) < 2)
    lock = threading.Lock()

    def record(i: int, result: GradeResult) -> None:
        result.max_score = max_score
        result.student_id = submissions[i].student_id
        result.content_hash = submissions[i].content_hash()
        with lock:
            results[i] = result
            if cache is not None:
                append_result(cache, keys[i], result)
            bar.update()

    workers = max(1, min(jobs, len(todo)))
    if todo and workers == 1:
        with GradingCourse(assignment, solutions_dir, cell_timeout=cell_timeout,
                           notebook_timeout=notebook_timeout) as course:
            for i in todo:
                record(i, grade_safely(course, submissions[i], feedback_dir, keep_graded))
    elif todo:
        threads = max(1, cpu_threads() // workers)
        options = {"assignment": assignment, "solutions_dir": str(solutions_dir), "cell_timeout": cell_timeout,
                   "notebook_timeout": notebook_timeout, "threads": threads,
                   "feedback_dir": str(feedback_dir) if feedback_dir else None,
                   "keep_graded": str(keep_graded) if keep_graded else None}
        # The worker's own limits stop a submission well before this; it is the last resort.
        limit = notebook_timeout * max(1, len(sources)) + 180
        grade_in_workers(submissions, todo, options, workers, limit, record)
    bar.close()
    for i, submission in enumerate(submissions):
        if i not in results:
            results[i] = GradeResult(submission=submission.label, score=0.0, max_score=max_score,
                                     error=submission.error, student_id=submission.student_id,
                                     content_hash=submission.content_hash())
            if cache is not None and submission.error:
                append_result(cache, keys[i], results[i])
    return [results[i] for i in range(len(submissions))]


def test_names(assignment: str, solutions_dir: Path = SOLUTIONS_DIR) -> list[str]:
    """The graded cells of the assignment, in notebook order (the CSV's test columns)."""
    return [name for path in sorted(source_folder(assignment, solutions_dir).glob("*.ipynb"))
            for name, _ in graded_cells(nbformat.read(path, as_version=4))]
