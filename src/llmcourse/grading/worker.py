"""A grading worker process: ``python -m llmcourse.grading.worker``, driven by ``autograde.grade``.

It reads JSON lines on stdin: first the options (assignment, limits, feedback folder), then
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
import sys
import warnings
from pathlib import Path
from typing import IO, Any


def _answer(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def main() -> int:
    """Serve grading requests on stdin until it closes."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # print() and nbgrader's chatter now go to stderr
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")  # the parent reports what matters, once
    from .autograde import Submission, _grade_safely
    from .course import GradingCourse, GradingError

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
    try:
        _answer(channel, {"ready": True})
        for line in sys.stdin:
            task = json.loads(line)
            data = task["submission"]
            submission = Submission(label=data["label"], student_id=data["student_id"], error=data.get("error"),
                                    notebooks={name: Path(path) for name, path in data["notebooks"].items()})
            result = _grade_safely(course, submission, feedback)
            _answer(channel, {"index": task["index"], "result": result.to_record()})
    finally:
        course.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
