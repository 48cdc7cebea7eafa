"""nbgrader's Execute step, made to survive hostile notebooks and keep only the marks they earned.

``GraderExecute`` runs each notebook in a sandboxed kernel (``sandbox.KernelSandbox``) and:

- limits every cell (``Execute.timeout``) and the whole notebook (``notebook_timeout``): a cell
  past its limit is interrupted and fails; once the notebook's time is up, the kernel is shut
  down and every later code cell fails with "not run";
- when the kernel dies (``os._exit``, a signal, the memory cgroup) or stops answering, the
  cells already run keep their results and the rest fail, instead of nbgrader dropping the
  whole submission: the learner gets the marks earned before it happened;
- keeps at most ``max_output_chars`` of each cell's output as it arrives (``outputs.OutputCap``), so
  enormous outputs never reach the grader's memory, the gradebook or a feedback page;
- records, per notebook, what stopped it (``STOPS``) and every cell interrupted at a limit, cut at
  the output cap or killed with the kernel (``WARNINGS``); ``autograde.grade_submission`` reads both.

Tests run in the submission's own kernel and nbgrader judges a test cell by whether it produced an
error, so a submission could change how the kernel runs code (input or AST transformers, a
replaced ``run_cell``, a patched traceback display, a trace function...) to swallow the failures
of the tests. Against that, the kernel is never told which cell is a test:

- each graded test cell is sent as one line that decodes an encoded payload and runs it with
  ``exec(compile(payload, "<random name>", "exec"), globals())`` (``wire_cell``), its source
  prepared in this process first (IPython syntax through ``TransformerManager``, a last
  expression still displayed) and padded to a random length;
- checks that must fail are sent in exactly the same shape (``Check``): test-like code with fresh
  names and values whose failure message carries a random nonce, followed by (unreachable) test
  code of the notebook, so that neither the wire text nor the decoded text tells them apart;
- one to three checks run right before and right after every test cell (those between two test
  cells serve both), and more at random before other cells. A check holds when the kernel answers with an error whose message has its nonce;
  a test keeps its result only when the checks on both sides of it held. When one does not, the
  submission is caught: that test and every later one fail, the kernel is stopped, and the error
  says the submission changed how the kernel runs code.

Tracebacks of the tests are rewritten to point at the test cell's own lines (``Cell In[n], line k``),
without the wire line. What this does not defend against (a submission that studies each cell as
it runs, e.g. which of its own functions a cell calls) is said in the instructor guide.
"""

from __future__ import annotations

import ast
import base64
import math
import random
import re
import string
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbformat.v4 import output_from_msg
from nbgrader.preprocessors import Execute
from traitlets import Float, Integer, Unicode, default

from .notebooks import nbgrader_meta
from .outputs import OutputCap
from .sandbox import KernelRun, KernelSandbox
from .settings import MAX_OUTPUT_CHARS, NOTEBOOK_TIMEOUT_S

SANDBOXES: dict[str, KernelSandbox] = {}  # course root -> its sandbox (set by GradingCourse)
STOPS: dict[str, str] = {}  # notebook folder being graded -> why its run stopped early
WARNINGS: dict[str, list[str]] = {}  # notebook folder being graded -> cells interrupted, truncated or killed
TAMPERING = ("the submission changed how the kernel runs code (a check that must fail did not, {where}), "
             "so its tests cannot be trusted: this test and every later one score 0; the remaining cells "
             "were not run")
NO_ANSWER = "the kernel did not answer a check {where}; the remaining cells were not run"


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


def _is_test(cell: NotebookNode) -> bool:
    meta = nbgrader_meta(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def _compiles(source: str) -> bool:
    try:
        compile(source, "<check>", "exec")
    except SyntaxError:
        return False
    return True


def error_output(ename: str, evalue: str) -> NotebookNode:
    """An error output as a kernel would send it (nbgrader gives a cell with one no marks)."""
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


# --- what the grader sends for a test cell, and the checks that must fail --------------------------

# Decoded to str before compile: compiled from bytes, a first line such as "# Greedy decoding: the ..."
# would be read as a PEP 263 encoding declaration.
WIRE = ('exec(compile(__import__("zlib").decompress(__import__("base64").b64decode("{data}")).decode(), "{name}", '
        '"exec"), globals())')
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_WORDS = ("row", "col", "total", "width", "count", "score", "value", "shape", "size", "mass", "step", "token",
          "head", "mask", "prob", "length", "batch", "pair", "logit", "weight", "item", "index", "sum", "gap")
_PHRASES = ("wrong total", "the sizes differ", "unexpected value", "the counts do not match", "off by some",
            "expected the same length", "not the expected result", "the shapes disagree", "mismatch")


def payload_name(rng: random.Random) -> str:
    """A fresh file name for one payload, in the shape of the names Python gives to generated code."""
    return "<" + "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(8, 14))) + ">"


def wire_cell(payload: str, name: str) -> str:
    """The one line sent to the kernel: decode ``payload`` and run it under the file ``name`` in the user namespace."""
    data = base64.b64encode(zlib.compress(payload.encode(), 6)).decode()
    return WIRE.format(data=data, name=name)


def _padding(rng: random.Random, most: int) -> str:
    """A trailing comment of random length: tests and checks do not differ by the length of what is sent."""
    size = rng.randint(0, most)
    return "\n# " + "".join(rng.choices(string.ascii_letters + string.digits, k=size)) + "\n" if size else "\n"


def prepare_test(source: str) -> str | None:
    """The test cell's source as plain Python with its line numbers kept, or None when it cannot be.

    IPython syntax (``%magics``, ``!commands``) goes through IPython's own TransformerManager, as the
    kernel would do; a last expression is passed to ``sys.displayhook`` so that it is still shown.
    """
    text = source
    try:
        tree = ast.parse(text)
    except SyntaxError:
        from IPython.core.inputtransformer2 import TransformerManager

        text = TransformerManager().transform_cell(source)
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return None  # e.g. a top-level await: sent as it is
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr) and last.end_lineno is not None and last.end_col_offset is not None:
        lines = text.splitlines(True)
        end, end_col = last.end_lineno - 1, last.end_col_offset
        lines[end] = lines[end][:end_col] + ")" + lines[end][end_col:]
        start, col = last.lineno - 1, last.col_offset
        lines[start] = lines[start][:col] + '__import__("sys").displayhook(' + lines[start][col:]
        text = "".join(lines)
    return text if text.endswith("\n") else text + "\n"


@dataclass
class Check:
    """A check that must fail: sent like a test, it holds when the kernel reports an error carrying ``nonce``."""

    source: str
    nonce: str

    @classmethod
    def make(cls, rng: random.Random, tails: list[str]) -> Check:
        """Test-like code with fresh names and values, failing with the nonce, then one of ``tails`` (never reached).

        It uses operators on int and list literals only: nothing that a submission may legitimately
        patch (builtins such as ``abs``, ``math``, numpy) changes whether it fails.
        """
        def name() -> str:
            first, second = rng.sample(_WORDS, 2)
            return f"{first}_{second}{rng.randint(2, 99)}"

        got_name, want_name = name(), name()
        got = rng.randint(10**8, 10**12)
        want = got + rng.choice((-1, 1)) * rng.randint(1, 10**6)
        phrase = rng.choice(_PHRASES)
        nonce = f"expected {want}, got {got}"
        kind = rng.randrange(4)
        lines = [f"{got_name} = {got}", f"{want_name} = {want}"]
        if kind == 0:
            lines.append(f'assert {got_name} == {want_name}, f"{phrase}: expected {{{want_name}}}, got {{{got_name}}}"')
        elif kind == 1:
            lines.append(f"assert {got_name} - {want_name} == 0, "
                         f'f"{phrase}: expected {{{want_name}}}, got {{{got_name}}}"')
        elif kind == 2:
            lines.append(f"if {got_name} != {want_name}:\n    raise AssertionError("
                         f'f"{phrase}: expected {{{want_name}}}, got {{{got_name}}}")')
        else:
            lines[0] = f"{got_name} = [{got}]"
            lines.append(f'assert {got_name} == [{want_name}], f"{phrase}: expected {{{want_name}}}, got {{{got_name}[0]}}"')
        if rng.random() < 0.5:
            lines.insert(rng.randint(0, 2), rng.choice(("import math", "import random", "import itertools")))
        tail = rng.choice(tails) if tails else ""
        return cls("\n".join(lines) + "\n" + tail, nonce)

    def holds(self, reply: dict[str, Any] | None) -> bool | None:
        """True if the kernel answered with the check's own error, False if not, None without an answer."""
        if reply is None:
            return None
        content = reply.get("content", {})
        return content.get("status") == "error" and self.nonce in str(content.get("evalue", ""))


def rewrite_traceback(output: NotebookNode, name: str, source: str, count: Any) -> None:
    """Make a test's error output point at the test cell's lines, as if it had been run as it is.

    The frame of the wire line goes; frames of the payload (file ``name``) become ``Cell In[count], line k``
    with the test's own lines around k.
    """
    lines = source.splitlines()
    frame = re.compile(re.escape(f"File {name}:") + r"(\d+)(.*)")
    kept = []
    for entry in output.get("traceback", []):
        plain = _ANSI.sub("", entry)
        if f'"{name}"' in plain:
            continue  # the wire line itself
        found = frame.search(plain.splitlines()[0] if plain else "")
        if found:
            at = int(found.group(1))
            shown = [f"{'---->' if k == at else '     '} {k:>2} {lines[k - 1]}"
                     for k in range(max(1, at - 2), min(len(lines), at + 2) + 1)]
            entry = "\n".join([f"Cell In[{count}], line {at}{found.group(2)}", *shown]) + "\n"
        kept.append(entry.replace(f"File {name}", f"Cell In[{count}]"))
    output["traceback"] = kept
    if name in str(output.get("evalue", "")):
        output["evalue"] = str(output["evalue"]).replace(name, f"Cell In[{count}]")


class GraderExecute(Execute):
    """nbgrader's Execute step with the sandbox, the notebook time limit and the fault handling above.

    ``Execute.__init__`` passes its own kernel manager class as an argument, which beats any
    configuration, hence the subclass sets GraderKernelManager itself.
    """

    course_root = Unicode("", help="The grading course whose sandbox runs the kernels.").tag(config=True)
    extra_check_rate = Float(0.15, help="Chance of a check before a cell that is not a test.").tag(config=True)
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
        self._cap = OutputCap(self.max_output_chars)
        self._wire: tuple[str, str] | None = None  # the payload name and source of the test running now
        self._warnings: list[str] = []
        self._rng = random.SystemRandom()
        self._tails: list[str] = []
        self._tests: dict[int, str | None] = {}
        self._checked = False  # the last thing the kernel ran was a check that held, after a test

    def preprocess(self, nb: NotebookNode, resources: Any = None, km: Any = None) -> tuple[NotebookNode, Any]:
        """Execute ``nb`` in a fresh sandboxed kernel; never raises for what the notebook does."""
        resources = resources or {}
        folder = str(resources.get("metadata", {}).get("path") or ".")
        self._cell_limit = int(self.timeout or 0) or 10**9
        self._deadline = time.monotonic() + self.notebook_timeout
        self._stopped = None
        self._cap = OutputCap(self.max_output_chars)
        self._warnings = []
        self.store_widget_state = False  # see on_comm_open_jupyter_widget
        self._checked = False
        self._tests = {i: prepare_test(cell.source) for i, cell in enumerate(nb.cells) if _is_test(cell)}
        self._tails = [text for text in self._tests.values() if text is not None and _compiles("_ = 0\n" + text)]
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
        if self._warnings:
            WARNINGS.setdefault(folder, []).extend(self._warnings)
        return nb, out

    def _where(self, cell: NotebookNode, index: int) -> str:
        meta = nbgrader_meta(cell)
        label = meta.get("grade_id") or cell.get("id") or "no id"
        return f"cell {index + 1} ({label})"

    def _warn(self, text: str) -> None:
        if text not in self._warnings:
            self._warnings.append(text)

    def _bracket(self, count: int) -> bool | None:
        """Run ``count`` checks; True when every one held, else what the first one that did not gave."""
        for _ in range(count):
            held = self._check()
            if not held:
                return held
        return True

    def _caught(self, cell: NotebookNode, held: bool | None, where: str) -> None:
        """A check did not hold around ``cell``: it fails, and so does every later cell."""
        message = (TAMPERING if held is False else NO_ANSWER).format(where=where)
        cell.outputs = [*cell.get("outputs", []),
                        error_output("TamperingDetected" if held is False else "NotRun", message)]
        self._stop(message)

    def _count(self) -> int:
        # Each check costs a round trip and a traceback (tens of ms): few, but never a fixed number.
        return self._rng.choices((1, 2, 3), weights=(14, 5, 1))[0]  # 1.35 on average

    def preprocess_cell(self, cell: NotebookNode, resources: Any, index: int) -> tuple[NotebookNode, Any]:
        """Run one cell within what is left of the notebook's time; mark it failed when it cannot run.

        A graded test cell is sent as a payload, between checks that must fail (module docstring).
        """
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, self.resources
        if self._stopped is None and time.monotonic() >= self._deadline:
            self._stop(f"the notebook ran longer than its limit of {self.notebook_timeout} s; "
                       "the remaining cells were not run")
            self._warn(f"{self._where(cell, index)} and the cells after it: not run, the notebook's time limit "
                       f"of {self.notebook_timeout} s was reached")
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
        where = self._where(cell, index)
        test = self._tests.get(index) if _is_test(cell) else None
        original = cell.source
        try:
            # The checks after a test are also the checks before a test that comes right after it.
            before = (0 if self._checked else self._count()) if _is_test(cell) else \
                int(self._rng.random() < self.extra_check_rate)
            held = self._bracket(before)
            if not held:
                self._caught(cell, held, f"before {where}")
                return cell, self.resources
            self._checked = False
            name = payload_name(self._rng)
            if test is not None:
                cell.source = wire_cell(test + _padding(self._rng, 400), name)
                self._wire = (name, test)  # output() rewrites the test's traceback as it arrives
            try:
                cell, _ = super().preprocess_cell(cell, resources, index)
            finally:
                cell.source = original
                self._wire = None
            if _is_test(cell):
                held = self._bracket(self._count())
                if not held:
                    self._caught(cell, held, f"after {where}")
                self._checked = bool(held)
        except DeadKernelError:
            cell.source = original
            cell.outputs = [*cell.get("outputs", []), error_output("DeadKernelError", self._death_reason())]
            self._stop(self._death_reason())
            self._warn(f"{where}: the kernel died while it ran ({self._death_reason().split(';')[0]})")
        except CellTimeoutError:
            # Interrupted, and still no answer: an endless loop that ignores KeyboardInterrupt.
            message = (f"the kernel stopped responding: a cell ran past its limit of {self.timeout} s "
                       "and ignored the interrupt; the remaining cells were not run")
            cell.outputs = [*cell.get("outputs", []), error_output("CellTimeoutError", message)]
            self._stop(message)
            self._warn(f"{where}: ran past the time limit of {self.timeout} s per cell and ignored the interrupt; "
                       "the kernel was stopped")
        else:
            timed_out = any(out.get("ename") == "CellTimeoutError" for out in cell.get("outputs", []))
            if timed_out and by_notebook:
                self._stop(f"the notebook ran longer than its limit of {self.notebook_timeout} s; "
                           "the remaining cells were not run")
                self._warn(f"{where}: interrupted at the notebook's time limit of {self.notebook_timeout} s")
            elif timed_out:
                self._warn(f"{where}: interrupted at the time limit of {self.timeout} s per cell")
        finally:
            if index in self._cap.cut:
                self._warn(f"{where}: output truncated at {self.max_output_chars} characters")
        return cell, self.resources

    def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None,
               cell_index: int) -> NotebookNode | None:
        """nbclient's handling of one output message, then the output cap (``outputs.OutputCap.admit``).

        A test's error is first rewritten to point at the test's own lines (``rewrite_traceback``).
        """
        out = super().output(outs, msg, display_id, cell_index)
        if out is None or not outs or outs[-1] is not out:
            return out
        if self._wire is not None and out.get("output_type") == "error":  # before it is measured
            rewrite_traceback(out, *self._wire, self.nb.cells[cell_index].get("execution_count"))
        return self._cap.admit(outs, out, cell_index, has_display_id=bool(display_id))

    def on_comm_open_jupyter_widget(self, msg: dict[str, Any]) -> None:
        """Mimic no widget, and keep no widget state (``store_widget_state`` is off).

        An Output widget's prints then land in the cell, where the output cap sees them, and a
        submission's comm messages cannot make the grader's memory grow.
        """
        return None

    def _update_display_id(self, display_id: str, msg: dict[str, Any]) -> None:
        """A display update (``update_display_data``) to every output with ``display_id``, within the cap.

        nbclient's own puts the new data in place whatever its size.
        """
        places = self._display_id_map.get(display_id)
        if not places:
            return
        try:
            new = output_from_msg({**msg, "header": {**msg["header"], "msg_type": "display_data"}})
        except ValueError:
            return
        for cell_index, indices in places.items():
            outputs = self.nb.cells[cell_index].get("outputs", [])
            for i in indices:
                if i < len(outputs):
                    self._cap.replace(outputs[i], new.get("data", {}), new.get("metadata", {}), cell_index)

    async def _async_check(self) -> bool | None:
        """Send one check that must fail, exactly as a test is sent; see ``Check.holds``."""
        assert self.kc is not None
        check = Check.make(self._rng, self._tails)
        code = wire_cell(check.source + _padding(self._rng, 250), payload_name(self._rng))
        # The same request as nbclient's for a cell: nothing in it tells a check from a test.
        msg_id = await ensure_async(self.kc.execute(code, store_history=True, stop_on_error=False))
        return check.holds(await self.async_wait_for_reply(msg_id))

    _check = run_sync(_async_check)

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
