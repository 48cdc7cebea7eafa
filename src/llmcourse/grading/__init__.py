"""Auto-grading of the course's nbgrader exercises: release, grade, validate.

The command line (``llmcourse grade / release / validate``) is a thin layer over these
functions; see ``llmcourse.cli``.
"""

from .autograde import GradeResult, Submission, TestResult, find_submissions, grade, grade_submission
from .course import GradingCourse, GradingError, assignment_names, check_unique_answer_ids, release_assignment
from .notebooks import SubmissionError, comparable, load_notebook
from .settings import CELL_TIMEOUT_S, EXERCISES_DIR, REPO_ROOT, SOLUTIONS_DIR, apply_grading_settings

__all__ = [
    "CELL_TIMEOUT_S", "EXERCISES_DIR", "REPO_ROOT", "SOLUTIONS_DIR", "GradeResult", "GradingCourse",
    "GradingError", "Submission", "SubmissionError", "TestResult", "apply_grading_settings",
    "assignment_names", "check_unique_answer_ids", "comparable", "find_submissions", "grade",
    "grade_submission", "load_notebook", "release_assignment",
]
