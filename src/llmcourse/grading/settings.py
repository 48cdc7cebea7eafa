"""Where the course's assignments live, and the nbgrader settings shared by every grading path.

`nbgrader_config.py` at the repository root and the temporary courses built by `llmcourse grade`
both call `apply_grading_settings`, so the limits are the same everywhere.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from nbformat import NotebookNode
from nbgrader.converters import Autograde
from nbgrader.preprocessors import Execute
from traitlets.config import Config

from .executor import MAX_OUTPUT_CHARS, NOTEBOOK_TIMEOUT_S, GraderExecute, GraderKernelManager
from .sandbox import KernelSandbox

REPO_ROOT = Path(__file__).resolve().parents[3]
SOLUTIONS_DIR = REPO_ROOT / "solutions"
EXERCISES_DIR = REPO_ROOT / "exercises"

CELL_TIMEOUT_S = 60  # per cell, while grading and validating (nbgrader's default is 30 s)
OUTPUTS_TIMEOUT_S = 600  # per cell, when re-executing the book's notebooks
GRADER_KERNEL = "llmcourse-grader"


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


def exchange_root() -> Path:
    """Return nbgrader's exchange folder in the user's cache (the default, /srv, is not writable)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "llmcourse" / "nbgrader-exchange"


def kernel_argv() -> list[str]:
    """Return the plain command line of an ipykernel on this interpreter (no sandbox).

    Grading kernels run it through ``kernel_wrapper.py`` (see ``sandbox.KernelSandbox``),
    which adds the connection file and the sandbox around it.
    """
    return [
        sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
        "--HistoryManager.hist_file=:memory:",
        "--IPKernelApp.log_level=ERROR",  # one TCP-encryption warning per submission otherwise
    ]


def write_kernelspec(kernels_dir: Path, sandbox: KernelSandbox | None = None) -> Path:
    """Write the grading kernelspec into ``kernels_dir/<GRADER_KERNEL>/`` and return its folder.

    With ``sandbox``, the kernel starts through the sandbox's wrapper and is interrupted by
    message (a signal to its process group cannot reach into the sandbox's session).
    """
    folder = kernels_dir / GRADER_KERNEL
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": sandbox.kernelspec_argv() if sandbox else kernel_argv(),
        "display_name": "llmcourse grader (Python 3)",
        "language": "python",
        "interrupt_mode": "message" if sandbox else "signal",
        "env": {"MPLBACKEND": "agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    }
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return folder


def put_interpreter_on_path() -> None:
    """Make this interpreter's scripts folder reachable on PATH (nbgrader runs ``alembic`` by name).

    Without it, ``.venv/bin/python -m ...`` from a shell where the venv is not activated fails
    to create a gradebook with "No such file or directory: 'alembic'".
    """
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


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


def grading_config(root: Path, kernels_dir: Path, cell_timeout: int = CELL_TIMEOUT_S,
                   notebook_timeout: int = NOTEBOOK_TIMEOUT_S, sandbox: KernelSandbox | None = None) -> Config:
    """Return the nbgrader configuration of a temporary grading course rooted at ``root``."""
    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = "llmcourse"
    c.Exchange.root = str(root / "exchange")
    apply_grading_settings(c)
    c.Execute.timeout = cell_timeout
    c.GraderKernelManager.kernels_dir = str(kernels_dir)
    c.Execute.kernel_name = GRADER_KERNEL
    c.GraderExecute.course_root = str(root)
    c.GraderExecute.notebook_timeout = notebook_timeout
    c.GraderExecute.max_output_chars = MAX_OUTPUT_CHARS
    if sandbox is not None:
        # Unix sockets in a private folder: TCP cannot cross the sandbox's network namespace.
        c.KernelManager.transport = "ipc"
        c.KernelManager.ip = sandbox.kernel_ip
    steps = Autograde.class_traits()["autograde_preprocessors"].default()
    c.Autograde.autograde_preprocessors = [GraderExecute if step is Execute else step for step in steps]
    return c


__all__ = [
    "CELL_TIMEOUT_S", "EXERCISES_DIR", "GRADER_KERNEL", "GraderExecute", "GraderKernelManager",
    "NOTEBOOK_TIMEOUT_S", "OUTPUTS_TIMEOUT_S", "REPO_ROOT", "SOLUTIONS_DIR", "apply_grading_settings", "assignment_limits",
    "exchange_root", "grading_config", "kernel_argv", "put_interpreter_on_path", "write_kernelspec",
]
