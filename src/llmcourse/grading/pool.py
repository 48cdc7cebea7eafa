"""Grading in worker processes: the client the grader drives (``grade_in_workers``) and the worker's
own loop (``serve``, run as ``python -m llmcourse.grading.pool``).

A worker reads JSON lines on stdin: first the options (assignment, limits, feedback folder), then
one submission per line; it answers one JSON line each on its original stdout: ``{"ready":
true}`` (or ``{"fatal": message}``), then ``{"index": i, "result": {...}}`` per submission.
Anything else the process prints goes to stderr, so it cannot garble the answers. It grades
in a course of its own (own gradebook, kernelspec, sandbox), removed when stdin closes.

Separate processes (rather than multiprocessing) work whatever started the grader, a script
piped on stdin included, and a worker that dies costs one submission an error row, not the run.
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .course import GradingCourse, GradingError
from .grader import grade_safely
from .results import GradeResult, Submission

__all__ = ["grade_in_workers", "serve"]


# --- the client: one thread per worker, feeding it submissions -----------------------------------

class _Worker:
    """One ``python -m llmcourse.grading.pool`` process, fed one submission at a time."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llmcourse.grading.pool"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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


def grade_in_workers(submissions: list[Submission], todo: list[int], options: dict[str, Any], jobs: int,
                     timeout: float, on_result: Callable[[int, GradeResult], None]) -> None:
    """Grade ``submissions[i]`` for each ``i`` in ``todo`` in ``jobs`` workers; ``on_result(i, result)`` as each ends."""
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


# --- the server: the worker process itself ----------------------------------------------------

def _answer(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def serve() -> int:
    """Serve grading requests on stdin until it closes."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # print() and nbgrader's chatter now go to stderr
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")  # the parent reports what matters, once
    line = sys.stdin.readline()
    if not line:
        return 0
    options = json.loads(line)
    try:
        course = GradingCourse(options["assignment"], Path(options["solutions_dir"]),
                               cell_timeout=options["cell_timeout"], notebook_timeout=options["notebook_timeout"],
                               threads=options.get("threads")).__enter__()
    except (GradingError, OSError) as error:
        _answer(channel, {"fatal": str(error)})
        return 1
    feedback = Path(options["feedback_dir"]) if options.get("feedback_dir") else None
    keep = Path(options["keep_graded"]) if options.get("keep_graded") else None
    try:
        _answer(channel, {"ready": True})
        for line in sys.stdin:
            task = json.loads(line)
            data = task["submission"]
            submission = Submission(label=data["label"], student_id=data["student_id"], error=data.get("error"),
                                    notebooks={name: Path(path) for name, path in data["notebooks"].items()})
            result = grade_safely(course, submission, feedback, keep)
            _answer(channel, {"index": task["index"], "result": result.to_record()})
    finally:
        course.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
