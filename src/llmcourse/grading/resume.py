"""Resuming: results of submissions graded before, kept in a JSON-lines file and reused while the
submission, the assignment's source and the limits are unchanged."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .course import source_folder
from .results import GradeResult, Submission
from .settings import SOLUTIONS_DIR

__all__ = ["source_hash", "cache_key", "load_results", "append_result", "reusable"]


def source_hash(assignment: str, solutions_dir: Path = SOLUTIONS_DIR) -> str:
    """SHA-256 of the assignment's source folder: a change of tests or points re-grades everything."""
    folder = source_folder(assignment, solutions_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(settings: str, submission: Submission) -> str:
    """The key of a submission's result: the grading settings, who submitted, where, and what."""
    text = f"{settings}\0{submission.student_id}\0{submission.label}\0{submission.content_hash()}"
    return hashlib.sha256(text.encode()).hexdigest()


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """The records saved in ``path`` by key (none when it does not exist yet)."""
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


def append_result(path: Path, key: str, result: GradeResult) -> None:
    """Add one result to ``path``, written through to the disk (an interrupted run keeps what it graded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(json.dumps({"key": key, "result": result.to_record()}) + "\n")
        file.flush()
        os.fsync(file.fileno())


def reusable(record: dict[str, Any], feedback_dir: Path | None) -> bool:
    """Whether a saved record stands: not a fault of the grader, and its feedback pages still there."""
    error = record.get("error") or ""
    if error.startswith(("grader error", "grading worker")):
        return False  # a fault of the grader, not of the submission: try again
    if feedback_dir is not None and record.get("tests"):
        pages = [Path(page) for page in record.get("feedback", [])]
        return bool(pages) and all(page.parent == feedback_dir and page.is_file() for page in pages)
    return True
