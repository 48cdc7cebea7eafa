"""Grading one submission in a grading course: check and restore its notebooks, run nbgrader's
autograde in the sandboxed kernel, read the scores from the gradebook, write the feedback pages."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy.exc import SAWarning

from .course import GradingCourse, last_error_line
from .executor import STOPS, WARNINGS
from .feedback import write_feedback
from .notebooks import SubmissionError, check_assignment, load_notebook, restore_missing_cells
from .results import GradeResult, Submission, TestResult

__all__ = ["grade_submission", "grade_safely"]


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
    "Kernel didn't respond": " (the grading kernel did not start)",
}


def grade_submission(course: GradingCourse, submission: Submission, feedback_dir: Path | None = None,
                     keep_graded: Path | None = None) -> GradeResult:
    """Grade one submission in its own folder of ``course`` and return its result; never raises for bad input.

    The submission's notebooks are checked, deleted graded cells put back, and the result
    written to ``submitted/<student>/<assignment>/``; nbgrader's autograde then runs it in a
    fresh sandboxed kernel (``sandbox.KernelSandbox``) working in a copy of
    ``autograded/<student>/<assignment>/``. When a limit stops a notebook (time, memory, a
    dead kernel), the cells run before it keep their marks and ``error`` says what happened.
    With ``keep_graded``, the graded notebooks are copied to ``keep_graded/<student>/<assignment>/``
    (nbgrader's ``autograded`` layout, with the submission's timestamp): they hold the hidden tests, so
    that folder is the instructor's only.
    """
    started = time.perf_counter()
    result = GradeResult(submission=submission.label, score=0.0, max_score=course.max_score, error=submission.error,
                         student_id=submission.student_id)
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

    graded_folder = str(course.root / "autograded" / submission.student_id / course.assignment)
    STOPS.pop(graded_folder, None)
    WARNINGS.pop(graded_folder, None)
    with warnings.catch_warnings():
        # nbgrader 0.9.6 with SQLAlchemy 2.x warns "Object ... not in session" on every new submission.
        warnings.simplefilter("ignore", SAWarning)
        outcome = course.api.autograde(course.assignment, submission.student_id, force=True, create=True)
    if not outcome["success"]:
        cause = last_error_line(outcome.get("log", "") + "\n" + outcome.get("error", ""))
        hint = next((text for key, text in FAILURE_HINTS.items() if key in cause), "")
        result.error = f"autograde failed: {cause}{hint}"
        log = course.sandbox.kernel_log_tail() if course.sandbox else ""
        if log and ("start" in hint or "Kernel" in cause):
            result.error += f"; kernel log: {log[-500:]}"
        result.score = 0.0
    else:
        try:
            result.score, result.tests = _read_scores(course, submission.student_id)
        except MissingEntry:
            result.error = "autograde finished but the gradebook has no scores for this submission"
            result.score = 0.0
        stopped = STOPS.pop(graded_folder, None)
        if stopped and not result.error:
            result.error = stopped
    result.warnings = WARNINGS.pop(graded_folder, [])

    if keep_graded is not None and result.tests:
        kept = keep_graded / submission.student_id / course.assignment
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(graded_folder, kept)
    if feedback_dir is not None and result.tests:
        try:
            result.feedback = write_feedback(course, submission, result, feedback_dir)
        except Exception as error:  # a page that cannot be written must not lose the grade
            warnings.warn(f"no feedback page for {submission.label}: {type(error).__name__}: {error}", stacklevel=2)
    result.seconds = time.perf_counter() - started
    return result


def grade_safely(course: GradingCourse, submission: Submission, feedback_dir: Path | None,
                 keep_graded: Path | None = None) -> GradeResult:
    """``grade_submission``, with any error of the grader itself turned into the row's error."""
    try:
        return grade_submission(course, submission, feedback_dir, keep_graded)
    except Exception as error:  # the grader must report, not crash, whatever a submission does
        return GradeResult(submission=submission.label, score=0.0, max_score=course.max_score,
                           error=f"grader error: {type(error).__name__}: {error}", student_id=submission.student_id)
