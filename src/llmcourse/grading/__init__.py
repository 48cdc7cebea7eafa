"""Auto-grading of the course's nbgrader exercises: release, grade, validate.

The command line (``llmcourse grade / release / validate``) is a thin layer over these
functions; see ``llmcourse.cli``. Kernels run in a sandbox (``sandbox``), with limits and
fault handling in ``executor``; learners' feedback pages come from ``feedback``.
"""

from .autograde import (
    GradeResult, SandboxWarning, Submission, TestResult, find_submissions, grade, grade_submission, source_hash,
    write_csv,
)
from .course import GradingCourse, GradingError, assignment_names, check_unique_answer_ids, release_assignment
from .executor import NOTEBOOK_TIMEOUT_S
from .notebooks import SubmissionError, comparable, load_notebook
from .sandbox import Limits, probe
from .settings import CELL_TIMEOUT_S, EXERCISES_DIR, REPO_ROOT, SOLUTIONS_DIR, apply_grading_settings

__all__ = [
    "CELL_TIMEOUT_S", "EXERCISES_DIR", "NOTEBOOK_TIMEOUT_S", "REPO_ROOT", "SOLUTIONS_DIR", "GradeResult",
    "GradingCourse", "GradingError", "Limits", "SandboxWarning", "Submission", "SubmissionError", "TestResult",
    "apply_grading_settings", "assignment_names", "check_unique_answer_ids", "comparable", "find_submissions",
    "grade", "grade_submission", "load_notebook", "probe", "release_assignment", "source_hash", "write_csv",
]
