"""Finding submissions: notebook files and folders (loose notebooks or nbgrader's layout) as ``Submission``s."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .results import Submission

__all__ = ["find_submissions"]


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
