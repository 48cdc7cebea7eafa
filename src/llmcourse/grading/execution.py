"""Running notebooks with nbclient: a learner's self-check (validate) and refreshing saved outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode

from .notebooks import load_notebook, nbgrader_meta
from .settings import OUTPUTS_TIMEOUT_S, assignment_limits


@dataclass
class CellCheck:
    """One test cell after a validation run."""

    name: str
    points: float
    error: str | None  # "AssertionError: ..." when the cell raised, else None


@dataclass
class ValidationReport:
    """What ``validate_notebook`` found: test cells and errors in other cells."""

    notebook: Path
    tests: list[CellCheck] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when there is at least one test cell and none of them failed."""
        return bool(self.tests) and all(test.error is None for test in self.tests)

    def summary(self) -> str:
        """Return a few lines for a person: passed and failed tests, and other errors."""
        earned = sum(t.points for t in self.tests if t.error is None)
        total = sum(t.points for t in self.tests)
        ok = sum(t.error is None for t in self.tests)
        lines = [f"{self.notebook}: {ok}/{len(self.tests)} test cells pass ({earned:g}/{total:g} points)"]
        for t in self.tests:
            points = f"{t.points:g} point{'' if t.points == 1 else 's'}"
            lines.append(f"  FAIL {t.name} ({points}): {t.error}" if t.error else f"  ok   {t.name} ({points})")
        lines += [f"  error in another cell: {message}" for message in self.other_errors]
        if not self.tests:
            lines.append("  no test cells found: is this an exercise notebook from exercises/?")
        elif self.passed:
            lines.append("All visible tests pass. Grading also runs hidden tests, so check edge cases too.")
        return "\n".join(lines)


def _error_text(cell: NotebookNode) -> str | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            value = str(output.get("evalue", "")).strip().splitlines()
            return f"{output.get('ename', 'Error')}: {value[0] if value else ''}".rstrip(": ")
    return None


def _client(nb: NotebookNode, folder: Path, timeout: int, allow_errors: bool, kernel: str) -> NotebookClient:
    # Quiet ipykernel's own warnings (one about TCP without encryption per run); cell output is unaffected.
    return NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=allow_errors,
                          record_timing=False, resources={"metadata": {"path": str(folder)}},
                          extra_arguments=["--IPKernelApp.log_level=ERROR"])


def validate_notebook(path: Path, timeout: int | None = None) -> ValidationReport:
    """Run every cell of the notebook at ``path`` (in its folder) and report its test cells.

    ``timeout``: seconds per cell; by default the notebook's own (``settings.assignment_limits``).

    Raises SubmissionError when the file is not a readable notebook.
    """
    nb = load_notebook(path)
    if timeout is None:
        timeout = assignment_limits([nb])[0]
    report = ValidationReport(notebook=path)
    kernel = nb.metadata.get("kernelspec", {}).get("name") or "python3"
    if kernel not in KernelSpecManager().find_kernel_specs():
        kernel = "python3"  # a kernel named in the file but not installed here (e.g. the grader's)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []  # old outputs (errors) must not count
            cell.execution_count = None  # set again for each cell that runs
    try:
        _client(nb, path.parent, timeout, allow_errors=True, kernel=kernel).execute()
    except (CellTimeoutError, DeadKernelError) as error:
        report.other_errors.append(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
    except Exception as error:  # the kernel did not start, or died in a way nbclient reports otherwise
        text = str(error).strip().splitlines()
        report.other_errors.append(f"{type(error).__name__}: {text[0] if text else 'no message'}")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = nbgrader_meta(cell)
        error = _error_text(cell)
        if error is None and cell.get("execution_count") is None and cell.source.strip():
            error = "not run (the kernel stopped or timed out before this cell)"
        if meta.get("grade") and not meta.get("solution"):
            name = str(meta.get("grade_id", f"cell {index + 1}"))
            report.tests.append(CellCheck(name, float(meta.get("points", 0)), error))
        elif error:
            report.other_errors.append(f"cell {index + 1} ({cell.get('id') or 'no id'}): {error}")
    return report


def execute_in_place(path: Path, timeout: int = OUTPUTS_TIMEOUT_S) -> None:
    """Re-execute the notebook at ``path`` in its own folder and save it with its new outputs.

    Raises CellExecutionError (the file is left as it was) when a cell fails.
    """
    nb = nbformat.read(path, as_version=4)
    _client(nb, path.parent, timeout, allow_errors=False, kernel="python3").execute()
    nbformat.write(nb, path)


__all__ = ["CellCheck", "CellExecutionError", "ValidationReport", "execute_in_place", "validate_notebook"]
