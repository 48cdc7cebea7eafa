"""Auto-grading submissions with nbgrader: find them, grade each one, report scores per test cell.

``grade`` is the whole pipeline: find submissions, skip those already graded and unchanged
(``cache``), grade the rest in one process or in ``jobs`` worker processes (each with its own
course, gradebook and sandbox), and return one ``GradeResult`` per submission, in order.
Whatever a submission does, it gets a row: a score (the marks it earned) and, when something
went wrong, an error in words.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy.exc import SAWarning
from tqdm import tqdm

from .course import GradingCourse, GradingError, last_error_line, source_folder
from .executor import STOPS, WARNINGS
from .notebooks import SubmissionError, check_assignment, graded_cells, load_notebook, restore_missing_cells
from .sandbox import cpu_threads, probe
from .settings import SOLUTIONS_DIR, assignment_limits


# Part of every cache key: a result graded by an older grader (other checks, fewer fields) is graded again.
GRADER_VERSION = "2"


class SandboxWarning(UserWarning):
    """Grading runs without part of its sandbox (no bubblewrap, or no cgroups)."""


@dataclass
class Submission:
    """One learner's work: the notebooks to grade, under a label and a student id."""

    label: str  # what the instructor passed or sees: a file, or submitted/<student>/<assignment>
    student_id: str  # a safe, unique id for nbgrader
    notebooks: dict[str, Path] = field(default_factory=dict)  # assignment notebook name -> file
    error: str | None = None  # set when the submission cannot be graded at all

    def content_hash(self) -> str:
        """SHA-256 of what was submitted: the notebooks' names and bytes (or the stray file's bytes)."""
        digest = hashlib.sha256()
        files = sorted(self.notebooks.items()) or [("", Path(self.label))]
        for name, path in files:
            digest.update(name.encode() + b"\0")
            try:
                digest.update(path.read_bytes() if path.is_file() else b"<not a file>")
            except OSError as error:
                digest.update(f"<unreadable: {error}>".encode())
            digest.update(b"\0")
        return digest.hexdigest()


@dataclass
class TestResult:
    """The outcome of one graded cell."""

    name: str
    score: float
    max_score: float
    passed: bool


@dataclass
class GradeResult:
    """The outcome of grading one submission; ``error`` says what went wrong (the score stays what it earned).

    ``warnings`` names each cell stopped at a limit (time, output, a dead kernel), even when the marks
    did not suffer: an instructor learns that the notebook hangs or floods its output.
    """

    submission: str
    score: float
    max_score: float
    error: str | None = None
    tests: list[TestResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    restored_cells: list[str] = field(default_factory=list)
    feedback: list[Path] = field(default_factory=list)
    student_id: str = ""
    content_hash: str = ""
    cached: bool = False  # reused from an earlier run (unchanged submission)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON record of the command line: submission, score, max_score, error, warnings, tests."""
        return {
            "submission": self.submission,
            "score": self.score,
            "max_score": self.max_score,
            "error": self.error,
            "warnings": list(self.warnings),
            "tests": [asdict(test) for test in self.tests],
        }

    def to_record(self) -> dict[str, Any]:
        """Everything, as plain JSON values (for the cache and the worker processes)."""
        record = asdict(self)
        record["feedback"] = [str(path) for path in self.feedback]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> GradeResult:
        """The inverse of ``to_record``."""
        data = dict(record)
        data["tests"] = [TestResult(**test) for test in data.get("tests", [])]
        data["feedback"] = [Path(path) for path in data.get("feedback", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def _safe_id(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "submission"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


def find_submissions(paths: Iterable[Path], assignment: str, notebook_names: Sequence[str]) -> list[Submission]:
    """Turn notebook files and folders into submissions.

    A file is one submission. A folder holds either loose ``.ipynb`` files (one submission
    each) or nbgrader's ``<student>/<assignment>/*.ipynb`` layout (one per student), or both.
    Raises FileNotFoundError for a path that does not exist and ValueError for a folder with
    nothing to grade: those are mistakes on the command line, not in a submission.
    """
    taken: set[str] = set()
    found: list[Submission] = []

    def loose(path: Path) -> Submission:
        submission = Submission(label=str(path), student_id=_safe_id(path.stem, taken))
        if path.suffix != ".ipynb":
            submission.error = f"not a notebook file: expected a .ipynb file, got '{path.name}'"
        elif len(notebook_names) == 1:
            submission.notebooks = {notebook_names[0]: path}
        elif path.stem in notebook_names:
            submission.notebooks = {path.stem: path}
        else:
            submission.error = (f"{assignment} has several notebooks ({', '.join(notebook_names)}): "
                                f"name the file after one of them, or submit the whole folder")
        return submission

    for path in paths:
        if path.is_file():
            found.append(loose(path))
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"no such file or folder: {path}")
        before = len(found)
        # submitted/ holds student folders; submitted/<student> holds the assignment's folder.
        if (path / assignment).is_dir():
            student_dirs = [path]
        else:
            student_dirs = sorted(p for p in path.iterdir() if (p / assignment).is_dir())
        for student_dir in student_dirs:
            folder = student_dir / assignment
            notebooks = {p.stem: p for p in sorted(folder.glob("*.ipynb")) if not p.name.startswith(".")}
            submission = Submission(label=str(folder), student_id=_safe_id(student_dir.name, taken),
                                    notebooks=notebooks)
            if not notebooks:
                submission.error = f"no .ipynb file in {folder}"
            found.append(submission)
        found.extend(loose(p) for p in sorted(path.glob("*.ipynb")) if p.is_file() and not p.name.startswith("."))
        if len(found) == before:
            raise ValueError(f"nothing to grade in {path}: expected .ipynb files or <student>/{assignment}/ folders")
    return found


def _read_scores(course: GradingCourse, student_id: str) -> tuple[float, list[TestResult]]:
    order = {name: i for i, (name, _) in enumerate(course.test_cells)}
    tests: list[TestResult] = []
    with Gradebook(course.db_url) as gradebook:
        submitted = gradebook.find_submission(course.assignment, student_id)
        score = float(submitted.score)
        for notebook in submitted.notebooks:
            for grade in notebook.grades:
                earned = float(grade.score or 0.0)
                top = float(grade.max_score)
                tests.append(TestResult(name=grade.name, score=earned, max_score=top, passed=top > 0 and earned >= top))
    tests.sort(key=lambda test: order.get(test.name, len(order)))
    return score, tests


FAILURE_HINTS = {  # what nbgrader's own words mean for the instructor
    "DeadKernelError": " (the submission's code stopped or crashed the Python kernel)",
    "IOPub": " (the submission's code broke the kernel's output channel)",
    "UnresponsiveKernel": " (the kernel stopped answering, e.g. an endless loop that ignores interrupts)",
    "Kernel didn't respond": " (the grading kernel did not start)",
}


def grade_submission(course: GradingCourse, submission: Submission, feedback_dir: Path | None = None) -> GradeResult:
    """Grade one submission in its own folder of ``course`` and return its result; never raises for bad input.

    The submission's notebooks are checked, deleted graded cells put back, and the result
    written to ``submitted/<student>/<assignment>/``; nbgrader's autograde then runs it in a
    fresh sandboxed kernel (``sandbox.KernelSandbox``) working in a copy of
    ``autograded/<student>/<assignment>/``. When a limit stops a notebook (time, memory, a
    dead kernel), the cells run before it keep their marks and ``error`` says what happened.
    """
    started = time.perf_counter()
    result = GradeResult(submission=submission.label, score=0.0, max_score=course.max_score, error=submission.error,
                         student_id=submission.student_id)
    if result.error:
        return result
    assert course.api is not None
    folder = course.root / "submitted" / submission.student_id / course.assignment
    try:
        unknown = sorted(set(submission.notebooks) - set(course.release_notebooks))
        if unknown:
            raise SubmissionError(f"notebook '{unknown[0]}' is not part of {course.assignment} "
                                  f"(its notebooks: {', '.join(course.release_notebooks)})")
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in submission.notebooks.items():
            nb = load_notebook(path)
            check_assignment(nb, course.release_notebooks[name], course.assignment)
            result.restored_cells += restore_missing_cells(nb, course.release_notebooks[name])
            nbformat.write(nb, folder / f"{name}.ipynb")
    except SubmissionError as error:
        result.error = str(error)
        result.seconds = time.perf_counter() - started
        return result

    graded_folder = str(course.root / "autograded" / submission.student_id / course.assignment)
    STOPS.pop(graded_folder, None)
    WARNINGS.pop(graded_folder, None)
    with warnings.catch_warnings():
        # nbgrader 0.9.6 with SQLAlchemy 2.x warns "Object ... not in session" on every new submission.
        warnings.simplefilter("ignore", SAWarning)
        outcome = course.api.autograde(course.assignment, submission.student_id, force=True, create=True)
    if not outcome["success"]:
        cause = last_error_line(outcome.get("log", "") + "\n" + outcome.get("error", ""))
        hint = next((text for key, text in FAILURE_HINTS.items() if key in cause), "")
        result.error = f"autograde failed: {cause}{hint}"
        log = course.sandbox.kernel_log_tail() if course.sandbox else ""
        if log and ("start" in hint or "Kernel" in cause):
            result.error += f"; kernel log: {log[-500:]}"
        result.score = 0.0
    else:
        try:
            result.score, result.tests = _read_scores(course, submission.student_id)
        except MissingEntry:
            result.error = "autograde finished but the gradebook has no scores for this submission"
            result.score = 0.0
        stopped = STOPS.pop(graded_folder, None)
        if stopped and not result.error:
            result.error = stopped
    result.warnings = WARNINGS.pop(graded_folder, [])

    if feedback_dir is not None and result.tests:
        from .feedback import write_feedback  # here: feedback imports this module's classes

        try:
            result.feedback = write_feedback(course, submission, result, feedback_dir)
        except Exception as error:  # a page that cannot be written must not lose the grade
            warnings.warn(f"no feedback page for {submission.label}: {type(error).__name__}: {error}", stacklevel=2)
    result.seconds = time.perf_counter() - started
    return result


def _grade_safely(course: GradingCourse, submission: Submission, feedback_dir: Path | None) -> GradeResult:
    try:
        return grade_submission(course, submission, feedback_dir)
    except Exception as error:  # the grader must report, not crash, whatever a submission does
        return GradeResult(submission=submission.label, score=0.0, max_score=course.max_score,
                           error=f"grader error: {type(error).__name__}: {error}", student_id=submission.student_id)


# --- resuming: results already computed for unchanged submissions ------------------------------

def source_hash(assignment: str, solutions_dir: Path = SOLUTIONS_DIR) -> str:
    """SHA-256 of the assignment's source folder: a change of tests or points re-grades everything."""
    folder = source_folder(assignment, solutions_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _cache_key(settings: str, submission: Submission) -> str:
    text = f"{settings}\0{submission.student_id}\0{submission.label}\0{submission.content_hash()}"
    return hashlib.sha256(text.encode()).hexdigest()


def _load_cache(path: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return entries
    for line in lines:
        try:
            entry = json.loads(line)
            entries[entry["key"]] = entry["result"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by an interrupted run: that submission is graded again
    return entries


def _append_cache(path: Path, key: str, result: GradeResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(json.dumps({"key": key, "result": result.to_record()}) + "\n")
        file.flush()
        os.fsync(file.fileno())


def _reusable(record: dict[str, Any], feedback_dir: Path | None) -> bool:
    error = record.get("error") or ""
    if error.startswith(("grader error", "grading worker")):
        return False  # a fault of the grader, not of the submission: try again
    if feedback_dir is not None and record.get("tests"):
        pages = [Path(page) for page in record.get("feedback", [])]
        return bool(pages) and all(page.parent == feedback_dir and page.is_file() for page in pages)
    return True


# --- worker processes ----------------------------------------------------------------------

class _Worker:
    """One ``python -m llmcourse.grading.worker`` process, fed one submission at a time."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llmcourse.grading.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True,  # a signal to the grader's process group does not reach the workers
        )
        reply = self._ask(self.options, timeout=300)
        if reply is None or "fatal" in reply:
            status = self.stop()
            raise GradingError((reply or {}).get("fatal") or f"a grading worker did not start (exit status {status})")

    def _ask(self, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        assert self.process is not None and self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            return None
        line = b""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            line += chunk
        return json.loads(line)

    def grade(self, index: int, submission: Submission, timeout: float) -> GradeResult:
        if self.process is None or self.process.poll() is not None:
            self.start()
        reply = self._ask({"index": index, "submission": {
            "label": submission.label, "student_id": submission.student_id, "error": submission.error,
            "notebooks": {name: str(path) for name, path in submission.notebooks.items()}}}, timeout)
        if reply is not None and reply.get("index") == index:
            return GradeResult.from_record(reply["result"])
        status = self.stop()
        what = "took longer than" if status is None or status == -9 else "died while grading this submission, within"
        return GradeResult(submission=submission.label, score=0.0, max_score=0.0, student_id=submission.student_id,
                           error=f"grading worker {what} {timeout:.0f} s (exit status {status}); "
                                 "the submission was not graded")

    def stop(self) -> int | None:
        if self.process is None:
            return None
        process, self.process = self.process, None
        status = process.poll()
        if status is None:
            try:
                process.stdin.close()  # type: ignore[union-attr]
                status = process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(process.pid, 9)
                status = process.wait()
                status = -9 if status is None else status
        return status


def _grade_in_workers(submissions: list[Submission], todo: list[int], options: dict[str, Any], jobs: int,
                      timeout: float, on_result: Any) -> None:
    tasks: queue.Queue[int] = queue.Queue()
    for i in todo:
        tasks.put(i)
    failure: list[BaseException] = []

    def run() -> None:
        worker = _Worker(options)
        try:
            while not failure:
                try:
                    i = tasks.get_nowait()
                except queue.Empty:
                    return
                on_result(i, worker.grade(i, submissions[i], timeout))
        except BaseException as error:  # noqa: BLE001 - a worker that cannot start stops the run
            failure.append(error)
        finally:
            worker.stop()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failure:
        raise failure[0] if isinstance(failure[0], GradingError) else GradingError(str(failure[0]))


def grade(assignment: str, paths: Sequence[Path], feedback_dir: Path | None = None,
          solutions_dir: Path = SOLUTIONS_DIR, progress: bool = True, jobs: int = 1,
          cell_timeout: int | None = None, notebook_timeout: int | None = None,
          cache: Path | None = None, force: bool = False) -> list[GradeResult]:
    """Grade every submission found in ``paths`` against ``solutions_dir/<assignment>``.

    With ``jobs`` > 1, that many worker processes grade in parallel, each in its own course.
    A cell running longer than ``cell_timeout`` seconds is interrupted and fails; a notebook
    running longer than ``notebook_timeout`` seconds is stopped, its remaining cells failing.
    Left out, both come from the assignment (``settings.assignment_limits``: 60 s and 300 s
    unless its notebooks ask for more). With ``cache`` (a JSON-lines file), submissions graded
    before with the same source, limits and content are not graded again (unless ``force``),
    and new results are added to it.
    Results come in the order the submissions were found.
    """
    sources = sorted(source_folder(assignment, solutions_dir).glob("*.ipynb"))
    source_notebooks = [nbformat.read(path, as_version=4) for path in sources]
    max_score = sum(points for nb in source_notebooks for _, points in graded_cells(nb))
    own_cell, own_notebook = assignment_limits(source_notebooks)
    cell_timeout = own_cell if cell_timeout is None else cell_timeout
    notebook_timeout = own_notebook if notebook_timeout is None else notebook_timeout
    submissions = find_submissions(paths, assignment, [path.stem for path in sources])
    feedback_dir = feedback_dir.resolve() if feedback_dir is not None else None
    settings = (f"{GRADER_VERSION}\0{assignment}\0{source_hash(assignment, solutions_dir)}\0{cell_timeout}"
                f"\0{notebook_timeout}")
    keys = [_cache_key(settings, submission) for submission in submissions]
    done = _load_cache(cache) if cache is not None and not force else {}
    results: dict[int, GradeResult] = {}
    for i, submission in enumerate(submissions):
        record = done.get(keys[i])
        if record is not None and _reusable(record, feedback_dir):
            results[i] = GradeResult.from_record({**record, "submission": submission.label, "cached": True})
    todo = [i for i, submission in enumerate(submissions) if i not in results and submission.error is None]

    support = probe()
    if todo and support.warning():
        warnings.warn(support.warning() or "", SandboxWarning, stacklevel=2)
    bar = tqdm(total=len(todo), desc=f"grading {assignment}", unit="submission",
               disable=not progress or len(todo) < 2)
    lock = threading.Lock()

    def record(i: int, result: GradeResult) -> None:
        result.max_score = max_score
        result.student_id = submissions[i].student_id
        result.content_hash = submissions[i].content_hash()
        with lock:
            results[i] = result
            if cache is not None:
                _append_cache(cache, keys[i], result)
            bar.update()

    workers = max(1, min(jobs, len(todo)))
    if todo and workers == 1:
        with GradingCourse(assignment, solutions_dir, cell_timeout=cell_timeout,
                           notebook_timeout=notebook_timeout) as course:
            for i in todo:
                record(i, _grade_safely(course, submissions[i], feedback_dir))
    elif todo:
        threads = max(1, cpu_threads() // workers)
        options = {"assignment": assignment, "solutions_dir": str(solutions_dir), "cell_timeout": cell_timeout,
                   "notebook_timeout": notebook_timeout, "threads": threads,
                   "feedback_dir": str(feedback_dir) if feedback_dir else None}
        # The worker's own limits stop a submission well before this; it is the last resort.
        limit = notebook_timeout * max(1, len(sources)) + 180
        _grade_in_workers(submissions, todo, options, workers, limit, record)
    bar.close()
    for i, submission in enumerate(submissions):
        if i not in results:
            results[i] = GradeResult(submission=submission.label, score=0.0, max_score=max_score,
                                     error=submission.error, student_id=submission.student_id,
                                     content_hash=submission.content_hash())
            if cache is not None and submission.error:
                _append_cache(cache, keys[i], results[i])
    return [results[i] for i in range(len(submissions))]


def test_names(assignment: str, solutions_dir: Path = SOLUTIONS_DIR) -> list[str]:
    """The graded cells of the assignment, in notebook order (the CSV's test columns)."""
    return [name for path in sorted(source_folder(assignment, solutions_dir).glob("*.ipynb"))
            for name, _ in graded_cells(nbformat.read(path, as_version=4))]


def write_csv(results: Sequence[GradeResult], path: Path, tests: Sequence[str] = ()) -> Path:
    """Write one row per submission (student, submission, score, max_score, one column per test, error, warnings).

    ``tests`` fixes the test columns (give ``test_names(assignment)`` so that the CSVs of
    several shards have the same header); tests found in the results are added after them.
    The file is written to a temporary name and renamed, so an interrupted run never leaves
    a half-written grade sheet.
    """
    import csv

    names: list[str] = list(tests)
    for result in results:
        names += [test.name for test in result.tests if test.name not in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["student", "submission", "score", "max_score", *names, "error", "warnings"])
        for result in results:
            scores = {test.name: f"{test.score:g}" for test in result.tests}
            writer.writerow([result.student_id, result.submission, f"{result.score:g}", f"{result.max_score:g}",
                             *(scores.get(name, "") for name in names), result.error or "",
                             "; ".join(result.warnings)])
    partial.replace(path)
    return path
