"""Temporary nbgrader courses built from ``solutions/``: one to release, one to grade."""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import nbformat
from nbformat import NotebookNode
from nbgrader.apps import NbGraderAPI
from nbgrader.coursedir import CourseDirectory

from .config import grading_config, put_interpreter_on_path, write_kernelspec
from .executor import SANDBOXES
from .notebooks import answer_ids, graded_cells, nbgrader_meta
from .sandbox import KernelSandbox, Limits
from .settings import CELL_TIMEOUT_S, NOTEBOOK_TIMEOUT_S, SOLUTIONS_DIR, assignment_memory


class GradingError(Exception):
    """The grader itself cannot run (missing assignment, broken source notebook)."""


def assignment_names(solutions_dir: Path = SOLUTIONS_DIR) -> list[str]:
    """Return the assignments found in ``solutions_dir`` (folders holding a notebook)."""
    if not solutions_dir.is_dir():
        return []
    return sorted(p.name for p in solutions_dir.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def source_folder(assignment: str, solutions_dir: Path = SOLUTIONS_DIR) -> Path:
    """Return ``solutions_dir/<assignment>``, or raise GradingError naming the assignments there are."""
    folder = solutions_dir / assignment
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", assignment) or not any(folder.glob("*.ipynb")):
        known = ", ".join(assignment_names(solutions_dir)) or "none"
        raise GradingError(f"no assignment '{assignment}' in {solutions_dir} (assignments there: {known})")
    return folder


def _quiet_logger(name: str) -> logging.Logger:
    # nbgrader logs every step; keep it off the terminal; capture_log still records it per call.
    log = logging.getLogger(name)
    log.propagate = False
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    log.setLevel(logging.INFO)
    return log


def last_error_line(log: str) -> str:
    """Return the telling part of an nbgrader log: the last exception raised under nbgrader's own.

    nbgrader ends every failure with "NbGraderException: Please see the above traceback";
    the cause is the exception logged before it (a dead kernel, a cell timeout...).
    """
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    exception = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Timeout)\b:?")
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if exception.match(line) and "NbGraderException" not in line:
            detail = next((text for text in lines[i + 1:i + 3] if text.startswith("The message was:")), "")
            return f"{line} {detail.removeprefix('The message was:').strip()}".strip()
    errors = [line for line in lines if line.startswith("[ERROR]") and "above traceback" not in line]
    return errors[-1].removeprefix("[ERROR]").strip() if errors else (lines[-1] if lines else "no log")


class GradingCourse:
    """A throw-away nbgrader course for one assignment: source, release, kernelspec, gradebook.

    Use it as a context manager. The source folder is copied from ``solutions/<assignment>``
    and ``generate_assignment`` fills the SQLite gradebook, so autograde restores test cells
    (and their hidden tests) from the instructor's version, as nbgrader intends.
    """

    def __init__(self, assignment: str, solutions_dir: Path = SOLUTIONS_DIR, workdir: Path | None = None,
                 cell_timeout: int = CELL_TIMEOUT_S, notebook_timeout: int = NOTEBOOK_TIMEOUT_S,
                 limits: Limits | None = None, threads: int | None = None):
        self.assignment = assignment
        self.cell_timeout = cell_timeout
        self.notebook_timeout = notebook_timeout
        self.limits = limits
        self.threads = threads
        self.sandbox: KernelSandbox | None = None
        self.source = source_folder(assignment, solutions_dir)
        self._workdir = workdir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.root = Path()
        self.api: NbGraderAPI | None = None
        self.release_notebooks: dict[str, NotebookNode] = {}
        self.test_cells: list[tuple[str, float]] = []

    def __enter__(self) -> GradingCourse:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"llmcourse-{self.assignment}-", dir=self._workdir)
        self.root = Path(self._tmp.name)
        try:
            self._build()
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.sandbox is not None:
            SANDBOXES.pop(str(self.root), None)
            self.sandbox.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _build(self) -> None:
        put_interpreter_on_path()
        shutil.copytree(self.source, self.root / "source" / self.assignment,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        kernels = self.root / "kernels"
        if self.limits is None:  # what the assignment asks for, never less than the defaults
            asked = assignment_memory(nbformat.read(path, as_version=4) for path in sorted(self.source.glob("*.ipynb")))
            default = Limits()
            if asked is not None and asked > default.memory_bytes:
                self.limits = replace(default, memory_bytes=asked,
                                      address_space_bytes=max(default.address_space_bytes, 2 * asked))
        self.sandbox = KernelSandbox(self.root, self.limits, self.threads)
        SANDBOXES[str(self.root)] = self.sandbox
        write_kernelspec(kernels, self.sandbox)
        config = grading_config(self.root, kernels, self.cell_timeout, self.notebook_timeout, self.sandbox)
        coursedir = CourseDirectory(config=config)
        self.api = NbGraderAPI(coursedir=coursedir, config=config, log=_quiet_logger("llmcourse.grading.nbgrader"))
        result = self.api.generate_assignment(self.assignment, force=True)
        if not result["success"]:
            raise GradingError(
                f"nbgrader could not generate {self.assignment} from {self.source}: "
                f"{last_error_line(result.get('error', '') + result.get('log', ''))}"
            )
        release = self.root / "release" / self.assignment
        self.release_notebooks = {p.stem: nbformat.read(p, as_version=4) for p in sorted(release.glob("*.ipynb"))}
        for name in self.release_notebooks:
            self.test_cells += graded_cells(nbformat.read(self.source / f"{name}.ipynb", as_version=4))

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL of this course's gradebook."""
        assert self.api is not None, "use GradingCourse as a context manager"
        return self.api.coursedir.db_url

    @property
    def max_score(self) -> float:
        """Total points of the assignment."""
        return sum(points for _, points in self.test_cells)


def release_assignment(assignment: str, exercises_dir: Path, solutions_dir: Path = SOLUTIONS_DIR) -> list[Path]:
    """Regenerate ``exercises_dir/<assignment>/`` from ``solutions_dir/<assignment>/`` with nbgrader."""
    with GradingCourse(assignment, solutions_dir) as course:
        generated = course.root / "release" / assignment
        target = exercises_dir / assignment
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(generated, target)
        for path in target.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
        return sorted(p for p in target.rglob("*") if p.is_file())


def check_unique_answer_ids(solutions_dir: Path = SOLUTIONS_DIR) -> None:
    """Raise GradingError if two assignments share a graded or solution cell id.

    The grader recognises a submission of the wrong assignment by these ids, so they must be
    unique across the course.
    """
    owner: dict[str, str] = {}
    for name in assignment_names(solutions_dir):
        for path in sorted((solutions_dir / name).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            for grade_id in answer_ids(nb):
                if grade_id in owner and owner[grade_id] != name:
                    raise GradingError(
                        f"cell id '{grade_id}' is used by both {owner[grade_id]} and {name}; "
                        "rename one (graded and solution cell ids must be unique across assignments)"
                    )
                owner[grade_id] = name
            for cell in nb.cells:
                meta = nbgrader_meta(cell)
                if meta.get("grade") and cell.cell_type == "code" and "points" not in meta:
                    raise GradingError(f"{path}: test cell '{meta.get('grade_id')}' has no points")
