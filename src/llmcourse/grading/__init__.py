"""Auto-grading of the course's nbgrader exercises: release, grade, validate.

The command line (``llmcourse grade / release / validate``) is a thin layer over these
functions; see ``llmcourse.cli``. The modules, from the leaf up:

- ``settings``: paths, limits and the nbgrader options every grading path shares (imports nothing
  of the grader: ``nbgrader_config.py`` reads it at every start of JupyterLab);
- ``notebooks``: reading notebooks and their nbgrader cells; ``sandbox``: the kernel's sandbox and
  its limits, with ``cgroups`` (memory and processes, v1 or v2); ``kernel_wrapper``: the script that
  starts a kernel inside it;
- ``outputs``: the one limit on what a cell may print, applied as each output arrives;
- ``executor``: running a notebook's cells in that kernel, with the checks against tampering;
  ``config``: the nbgrader configuration of a grading course; ``course``: such a course;
- ``results``: what grading produces (and the CSV); ``submissions``: finding them; ``grader``:
  grading one; ``resume``: reusing earlier results; ``pool``: worker processes, client and server;
  ``autograde``: the whole pipeline (``grade``); ``feedback``: the learners' pages;
  ``execution``: running a notebook's tests outside grading (``validate``).

The names below are loaded on first use, so that importing one module does not import them all.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SandboxWarning": "autograde", "grade": "autograde", "test_names": "autograde",
    "GradeResult": "results", "Submission": "results", "TestResult": "results", "write_csv": "results",
    "find_submissions": "submissions", "grade_submission": "grader", "source_hash": "resume",
    "GradingCourse": "course", "GradingError": "course", "assignment_names": "course",
    "check_unique_answer_ids": "course", "release_assignment": "course",
    "SubmissionError": "notebooks", "comparable": "notebooks", "load_notebook": "notebooks",
    "Limits": "sandbox", "probe": "sandbox",
    "CELL_TIMEOUT_S": "settings", "EXERCISES_DIR": "settings", "NOTEBOOK_TIMEOUT_S": "settings",
    "REPO_ROOT": "settings", "SOLUTIONS_DIR": "settings", "apply_grading_settings": "settings",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
