"""The nbgrader configuration of a temporary grading course: the grading kernelspec, the sandbox's
transport, and the course's executor in place of nbgrader's ``Execute``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nbgrader.converters import Autograde
from nbgrader.preprocessors import Execute
from traitlets.config import Config

from .executor import GraderExecute
from .sandbox import KernelSandbox
from .settings import CELL_TIMEOUT_S, GRADER_KERNEL, MAX_OUTPUT_CHARS, NOTEBOOK_TIMEOUT_S, apply_grading_settings

__all__ = ["kernel_argv", "write_kernelspec", "put_interpreter_on_path", "grading_config"]


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
