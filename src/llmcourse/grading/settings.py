"""Where the course's assignments live, and the nbgrader settings shared by every grading path.

`nbgrader_config.py` at the repository root and the temporary courses built by `llmcourse grade`
both call `apply_grading_settings`, so the limits are the same everywhere.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbgrader.converters import Autograde
from nbgrader.preprocessors import Execute
from traitlets import Unicode, default
from traitlets.config import Config

REPO_ROOT = Path(__file__).resolve().parents[3]
SOLUTIONS_DIR = REPO_ROOT / "solutions"
EXERCISES_DIR = REPO_ROOT / "exercises"

CELL_TIMEOUT_S = 60  # per cell, while grading and validating (nbgrader's default is 30 s)
OUTPUTS_TIMEOUT_S = 600  # per cell, when re-executing the book's notebooks
GRADER_KERNEL = "llmcourse-grader"


def exchange_root() -> Path:
    """Return nbgrader's exchange folder in the user's cache (the default, /srv, is not writable)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "llmcourse" / "nbgrader-exchange"


def kernel_argv() -> list[str]:
    """Return the command line of the grading kernel: this interpreter's ipykernel.

    This is where a sandbox slots in: a wrapper (bubblewrap, cgroups, rlimits) goes in front
    of this command, and nothing else in the grading code has to change.
    """
    return [
        sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
        "--HistoryManager.hist_file=:memory:",
        "--IPKernelApp.log_level=ERROR",  # one TCP-encryption warning per submission otherwise
    ]


def write_kernelspec(kernels_dir: Path) -> Path:
    """Write the grading kernelspec into ``kernels_dir/<GRADER_KERNEL>/`` and return its folder."""
    folder = kernels_dir / GRADER_KERNEL
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": kernel_argv(),
        "display_name": "llmcourse grader (Python 3)",
        "language": "python",
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


class GraderKernelManager(AsyncKernelManager):
    """A kernel manager that finds kernelspecs in one configured folder only.

    jupyter_client's default looks in the Jupyter data path, which an instructor's own
    kernels may shadow, and ``KernelSpecManager.kernel_dirs`` is not configurable.
    """

    kernels_dir = Unicode("", help="Folder holding the grading kernelspec.").tag(config=True)

    @default("kernel_spec_manager")
    def _grading_kernel_spec_manager(self) -> KernelSpecManager:
        if not self.kernels_dir:
            return KernelSpecManager(parent=self)
        return KernelSpecManager(parent=self, kernel_dirs=[self.kernels_dir], ensure_native_kernel=False)


class GraderExecute(Execute):
    """nbgrader's Execute step, starting kernels with GraderKernelManager.

    ``Execute.__init__`` passes its own kernel manager class as an argument, which beats any
    configuration, hence this subclass.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("kernel_manager_class", GraderKernelManager)
        super().__init__(*args, **kwargs)


def grading_config(root: Path, kernels_dir: Path, cell_timeout: int = CELL_TIMEOUT_S) -> Config:
    """Return the nbgrader configuration of a temporary grading course rooted at ``root``."""
    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = "llmcourse"
    c.Exchange.root = str(root / "exchange")
    apply_grading_settings(c)
    c.Execute.timeout = cell_timeout
    c.GraderKernelManager.kernels_dir = str(kernels_dir)
    c.Execute.kernel_name = GRADER_KERNEL
    steps = Autograde.class_traits()["autograde_preprocessors"].default()
    c.Autograde.autograde_preprocessors = [GraderExecute if step is Execute else step for step in steps]
    return c
