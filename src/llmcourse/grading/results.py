"""What grading produces: a submission, the result of each graded cell, and the result of a submission,
with the CSV grade sheet they make."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Submission", "TestResult", "GradeResult", "write_csv"]


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
