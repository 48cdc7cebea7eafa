"""Where the course's assignments live, the grading limits, and the nbgrader settings every grading path shares.

A leaf: it imports nothing of the grader, so that ``nbgrader_config.py`` (read at every start of
JupyterLab and of ``nbgrader``) stays light. `nbgrader_config.py` at the repository root and the
temporary courses built by `llmcourse grade` (``config.grading_config``) both call
``apply_grading_settings``, so the limits are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from llmcourse.cache import cache_dir

if TYPE_CHECKING:
    from nbformat import NotebookNode
    from traitlets.config import Config

REPO_ROOT = Path(__file__).resolve().parents[3]
SOLUTIONS_DIR = REPO_ROOT / "solutions"
EXERCISES_DIR = REPO_ROOT / "exercises"

CELL_TIMEOUT_S = 60  # per cell, while grading and validating (nbgrader's default is 30 s)
NOTEBOOK_TIMEOUT_S = 300  # per notebook, while grading
OUTPUTS_TIMEOUT_S = 600  # per cell, when re-executing the book's notebooks
MAX_OUTPUT_CHARS = 20_000  # per cell, in the graded notebook and the feedback
GRADER_KERNEL = "llmcourse-grader"
PRIVATE_CACHE_FOLDERS = ("grading", "nbgrader-exchange")  # in the cache, never mounted into a sandbox


def assignment_limits(notebooks: Iterable[NotebookNode]) -> tuple[int, int]:
    """Seconds per cell and per notebook that an assignment's notebooks ask for, else the defaults.

    A notebook whose cells legitimately run long (ex04 fine-tunes a model) says so in its
    metadata, ``"llmcourse": {"cell_timeout": 600, "notebook_timeout": 1200}``; grading reads
    it from the instructor's source notebooks, never from a submission.
    """
    cell, notebook = CELL_TIMEOUT_S, NOTEBOOK_TIMEOUT_S
    for nb in notebooks:
        asked = nb.metadata.get("llmcourse", {})
        for name in ("cell_timeout", "notebook_timeout"):
            value = asked.get(name)
            if value is not None and (type(value) is not int or value <= 0):
                raise ValueError(f"notebook metadata llmcourse.{name} must be a positive number of seconds, got {value!r}")
        cell = max(cell, asked.get("cell_timeout") or 0)
        notebook = max(notebook, asked.get("notebook_timeout") or 0)
    return cell, notebook


def assignment_memory(notebooks: Iterable[NotebookNode]) -> int | None:
    """Bytes of memory per grading kernel that an assignment's notebooks ask for, or None for the default.

    A notebook that trains a real model (ex07 fine-tunes SmolLM2) asks in its metadata,
    ``"llmcourse": {"memory_gib": 4}``: the kernel's memory cgroup gets that much, and its
    address-space limit twice as much. Like the timeouts, it is read from the instructor's source
    notebooks only, and the largest request counts.
    """
    asked_bytes = None
    for nb in notebooks:
        value = nb.metadata.get("llmcourse", {}).get("memory_gib")
        if value is None:
            continue
        if type(value) not in (int, float) or not 0 < value <= 64:
            raise ValueError(f"notebook metadata llmcourse.memory_gib must be a number of GiB in (0, 64], got {value!r}")
        asked_bytes = max(asked_bytes or 0, int(value * 2**30))
    return asked_bytes


def exchange_root() -> Path:
    """nbgrader's exchange folder, in the course's cache (nbgrader's default, /srv, is not writable)."""
    return cache_dir() / "nbgrader-exchange"


def grading_results_dir() -> Path:
    """Where ``llmcourse grade`` keeps its results cache, one file per assignment."""
    return cache_dir() / "grading"


def apply_grading_settings(c: Config) -> Config:
    """Set the course's nbgrader options on ``c`` (timeouts, restored cells, stderr) and return it."""
    c.Execute.timeout = CELL_TIMEOUT_S
    c.Execute.interrupt_on_timeout = True
    # A test cell deleted from a submission is put back from the gradebook and run.
    c.OverwriteCells.add_missing_cells = True
    # nbgrader gives 0 to a test cell that writes anything to stderr. Our tests fail only by
    # raising, so stderr (a warning, a debug print, logging) must not cost a correct submission.
    c.IgnorePattern.enabled = True
    c.IgnorePattern.pattern = r"[\s\S]"
    c.LimitOutput.max_lines = 1000
    c.LimitOutput.max_traceback = 100
    return c


__all__ = [
    "CELL_TIMEOUT_S", "EXERCISES_DIR", "GRADER_KERNEL", "MAX_OUTPUT_CHARS", "NOTEBOOK_TIMEOUT_S", "OUTPUTS_TIMEOUT_S",
    "PRIVATE_CACHE_FOLDERS", "REPO_ROOT", "SOLUTIONS_DIR", "apply_grading_settings", "assignment_limits", "assignment_memory",
    "exchange_root", "grading_results_dir",
]
