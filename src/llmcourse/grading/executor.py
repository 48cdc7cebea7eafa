"""nbgrader's Execute step, made to survive hostile notebooks and keep the marks they earned.

``GraderExecute`` runs each notebook in a sandboxed kernel (``sandbox.KernelSandbox``) and:

- limits every cell (``Execute.timeout``) and the whole notebook (``notebook_timeout``): a cell
  past its limit is interrupted and fails; once the notebook's time is up, the kernel is shut
  down and every later code cell fails with "not run";
- when the kernel dies (``os._exit``, a signal, the memory cgroup) or stops answering, the
  cells already run keep their results and the rest fail, instead of nbgrader dropping the
  whole submission: the learner gets the marks earned before it happened;
- truncates enormous outputs before they reach the gradebook or a feedback page;
- before each test cell, runs a check that must fail (``assert 1 + 1 == 3``): if it passes, the
  submission has changed how the kernel runs code (an input transformer, a replaced
  ``run_cell``...), so no later test can be trusted and the rest of the notebook fails;
- records what stopped a notebook in ``STOPS`` (read by ``autograde.grade_submission``).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer, Unicode, default

from .notebooks import nbgrader_meta
from .sandbox import KernelRun, KernelSandbox

NOTEBOOK_TIMEOUT_S = 300  # per notebook, while grading
MAX_OUTPUT_CHARS = 20_000  # per cell, in the graded notebook and the feedback
TRUNCATED = "\n[... output truncated by the grader: more than {limit} characters ...]\n"

SANDBOXES: dict[str, KernelSandbox] = {}  # course root -> its sandbox (set by GradingCourse)
STOPS: dict[str, str] = {}  # notebook folder being graded -> why its run stopped early


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


def _size(output: NotebookNode) -> int:
    kind = output.get("output_type")
    if kind == "stream":
        return len(output.get("text", ""))
    if kind == "error":
        return len(str(output.get("evalue", ""))) + sum(len(line) for line in output.get("traceback", []))
    return len(json.dumps(output.get("data", {}))) + len(json.dumps(output.get("metadata", {})))


def _cut(text: Any, limit: int) -> str:
    text = "".join(text) if isinstance(text, list) else str(text)
    return text if len(text) <= limit else text[:limit] + TRUNCATED.format(limit=limit)


def limit_outputs(cell: NotebookNode, limit: int = MAX_OUTPUT_CHARS) -> bool:
    """Shrink the outputs of ``cell`` to about ``limit`` characters in all; return True if it cut any."""
    budget, cut = limit, False
    kept = []
    for output in cell.get("outputs", []):
        size = _size(output)
        kind = output.get("output_type")
        if size <= budget:
            kept.append(output)
            budget -= size
            continue
        cut = True
        room = max(budget, 200)
        if kind == "stream":
            output["text"] = _cut(output.get("text", ""), room)
        elif kind == "error":  # keep the error (it decides the grade), shortened
            output["evalue"] = _cut(output.get("evalue", ""), min(room, 2000))
            lines = [_cut(line, 500) for line in output.get("traceback", [])[-20:]]
            output["traceback"] = lines
        else:
            output["data"] = {"text/plain": TRUNCATED.format(limit=limit).strip()}
            output["metadata"] = {}
        kept.append(output)
        budget = max(0, budget - _size(output))
    cell["outputs"] = kept
    return cut


def error_output(ename: str, evalue: str) -> NotebookNode:
    """An error output as a kernel would send it (nbgrader gives a cell with one no marks)."""
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class GraderExecute(Execute):
    """nbgrader's Execute step with the sandbox, the notebook time limit and the fault handling above.

    ``Execute.__init__`` passes its own kernel manager class as an argument, which beats any
    configuration, hence the subclass sets GraderKernelManager itself.
    """

    course_root = Unicode("", help="The grading course whose sandbox runs the kernels.").tag(config=True)
    notebook_timeout = Integer(NOTEBOOK_TIMEOUT_S, help="Seconds for the whole notebook.").tag(config=True)
    max_output_chars = Integer(MAX_OUTPUT_CHARS, help="Characters of output kept per cell.").tag(config=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("kernel_manager_class", GraderKernelManager)
        super().__init__(*args, **kwargs)
        self._cell_limit = 0
        self._deadline = 0.0
        self._stopped: str | None = None
        self._run: KernelRun | None = None
        self._sandbox: KernelSandbox | None = None
        self._output_chars: dict[int, int] = {}

    def preprocess(self, nb: NotebookNode, resources: Any = None, km: Any = None) -> tuple[NotebookNode, Any]:
        """Execute ``nb`` in a fresh sandboxed kernel; never raises for what the notebook does."""
        resources = resources or {}
        folder = str(resources.get("metadata", {}).get("path") or ".")
        self._cell_limit = int(self.timeout or 0) or 10**9
        self._deadline = time.monotonic() + self.notebook_timeout
        self._stopped = None
        self._output_chars = {}
        self.shutdown_kernel = "graceful"
        self._sandbox = SANDBOXES.get(self.course_root)
        self._run = self._sandbox.prepare(Path(folder)) if self._sandbox else None
        run_resources = dict(resources)
        if self._run is not None:
            run_resources["metadata"] = {**resources.get("metadata", {}), "path": str(self._run.workdir)}
        try:
            nb, out = super().preprocess(nb, run_resources, km)
        finally:
            self.timeout = self._cell_limit
            if self._sandbox is not None and self._run is not None:
                self._sandbox.finish(self._run)
        out["metadata"] = resources.get("metadata", {})
        if self._stopped:
            STOPS[folder] = self._stopped
        return nb, out

    def preprocess_cell(self, cell: NotebookNode, resources: Any, index: int) -> tuple[NotebookNode, Any]:
        """Run one cell within what is left of the notebook's time; mark it failed when it cannot run."""
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, self.resources
        if self._stopped is None and time.monotonic() >= self._deadline:
            self._stop(f"the notebook ran longer than its limit of {self.notebook_timeout} s; "
                       "the remaining cells were not run")
        if self._stopped is not None:
            cell.outputs = [error_output("NotRun", f"not run: {self._stopped}")]
            return cell, self.resources
        remaining = self._deadline - time.monotonic()
        by_notebook = remaining < self._cell_limit
        self.timeout = max(1, min(self._cell_limit, math.ceil(remaining)))
        self.error_on_timeout = {
            "ename": "CellTimeoutError",
            "evalue": f"the cell ran longer than {self.timeout} s and was interrupted",
            "traceback": [f"CellTimeoutError: the cell ran longer than {self.timeout} s and was interrupted"],
        }
        try:
            if nbgrader_meta(cell).get("grade") and not nbgrader_meta(cell).get("solution"):
                honest = self._canary()
                if not honest:
                    message = ("the submission changed how the kernel runs code (a check that must fail "
                               "did not), so no test can be trusted; the remaining cells were not run"
                               if honest is False else "the kernel did not answer a check before a test; "
                               "the remaining cells were not run")
                    cell.outputs = [error_output("TamperingDetected" if honest is False else "NotRun", message)]
                    self._stop(message)
                    return cell, self.resources
            cell, _ = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            cell.outputs = [*cell.get("outputs", []), error_output("DeadKernelError", self._death_reason())]
            self._stop(self._death_reason())
        except CellTimeoutError:
            # Interrupted, and still no answer: an endless loop that ignores KeyboardInterrupt.
            message = (f"the kernel stopped responding: a cell ran past its limit of {self.timeout} s "
                       "and ignored the interrupt; the remaining cells were not run")
            cell.outputs = [*cell.get("outputs", []), error_output("CellTimeoutError", message)]
            self._stop(message)
        else:
            timed_out = any(out.get("ename") == "CellTimeoutError" for out in cell.get("outputs", []))
            if timed_out and by_notebook:
                self._stop(f"the notebook ran longer than its limit of {self.notebook_timeout} s; "
                           "the remaining cells were not run")
        finally:
            limit_outputs(cell, self.max_output_chars)
        return cell, self.resources

    def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None,
               cell_index: int) -> NotebookNode | None:
        """Keep at most ``max_output_chars`` of a cell's output as it arrives (the rest is dropped)."""
        out = super().output(outs, msg, display_id, cell_index)
        if out is None:
            return None
        used = self._output_chars.get(cell_index, 0)
        size = _size(out)
        self._output_chars[cell_index] = used + size
        if used + size > self.max_output_chars and out.get("output_type") != "error":
            # Replace in place (indexes of display ids stay valid): a note the first time, then nothing.
            note = TRUNCATED.format(limit=self.max_output_chars) if used <= self.max_output_chars else ""
            if out.get("output_type") == "stream" and used < self.max_output_chars:
                note = _cut(out.get("text", ""), self.max_output_chars - used) if note else ""
            replacement = NotebookNode(output_type="stream", name="stdout", text=note)
            if outs and outs[-1] is out:
                outs[-1] = replacement
                return replacement
        return out

    async def _async_canary(self) -> bool | None:
        """Run ``assert 1 + 1 == 3, TOKEN``: True if it failed as it must, False if not, None without an answer."""
        assert self.kc is not None
        token = secrets.token_hex(8)
        msg_id = await ensure_async(self.kc.execute(f'assert 1 + 1 == 3, "{token}"', silent=False,
                                                    store_history=False, stop_on_error=False))
        reply = await self.async_wait_for_reply(msg_id)
        if reply is None:
            return None
        content = reply.get("content", {})
        return content.get("status") == "error" and token in str(content.get("evalue", ""))

    _canary = run_sync(_async_canary)

    def _stop(self, reason: str) -> None:
        if self._stopped is None:
            self._stopped = reason
        self.shutdown_kernel = "immediate"

    def _death_reason(self) -> str:
        if self._sandbox is not None and self._run is not None and self._sandbox.out_of_memory(self._run):
            limit = self._sandbox.limits.memory_bytes / 2**30
            return (f"the kernel was killed for using more than {limit:g} GiB of memory; "
                    "the remaining cells were not run")
        return ("the kernel died: the submission's code ended or crashed the Python process "
                "(os._exit, a signal, a fatal error); the remaining cells were not run")
