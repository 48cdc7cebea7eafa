"""Feedback pages for learners: one self-contained HTML file per submission, made here.

nbgrader's own feedback shows the hidden tests' source and tracebacks and loads MathJax from
a CDN. These pages show, per graded cell: its name, the marks, the *released* (visible) test
code, and the outcome. A failure inside the visible tests shows its error message; a failure
in the hidden part shows only that the hidden tests failed. Every text that came from the
submission's run is also scrubbed of any line of the hidden tests (a submission can read the
test source while it runs and put it in an error message), and of the encoded tests the grader
sends (executor.wire_cell). No maths, no scripts, no remote
resources: the page opens offline, as a file.
"""

from __future__ import annotations

import base64
import html
import re
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
from nbformat import NotebookNode

from .notebooks import nbgrader_meta

if TYPE_CHECKING:
    from .results import GradeResult, Submission
    from .course import GradingCourse

HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ENCODED = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")  # the grader sends tests base64-encoded (executor.wire_cell)
CELL_LINE = re.compile(r"(?:Cell In\s*\[\d*\]|<ipython-input-[^>]*>|File \"<[^\"]*>\"), line (\d+)")

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60em; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.total { font-size: 1.2em; } .error { background: #fff3cd; border: 1px solid #e0c060; padding: .6em; }
pre { background: #f6f8fa; padding: .7em; overflow-x: auto; font-size: 13px; border-radius: 4px; }
.pass { color: #176f2c; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: left; }
.note { color: #555; }
"""


def split_hidden(source: str) -> tuple[str, list[str]]:
    """Return (the visible part of a test cell, its hidden lines)."""
    visible, hidden, inside = [], [], False
    for line in source.splitlines():
        if HIDDEN_BEGIN in line:
            inside = True
        elif HIDDEN_END in line:
            inside = False
        elif inside:
            hidden.append(line)
        else:
            visible.append(line)
    return "\n".join(visible), hidden


class Redactor:
    """Replaces, in any text, each line of the hidden tests that the released notebooks do not show (even in part)."""

    def __init__(self, sources: list[NotebookNode], releases: list[NotebookNode], shortest: int = 6):
        shown = "\n".join(cell.source for nb in releases for cell in nb.cells)
        secret: set[str] = set()
        for nb in sources:
            for cell in nb.cells:
                if nbgrader_meta(cell).get("grade"):
                    secret.update(line.strip() for line in split_hidden(cell.source)[1])
        secret = {line for line in secret if len(line) >= shortest and line not in shown}
        self.secret = sorted(secret | {HIDDEN_BEGIN, HIDDEN_END}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = ENCODED.sub(_encoded_test, text)
        for line in self.secret:
            if line in text:
                text = text.replace(line, "[hidden test]")
        return text


def _encoded_test(found: re.Match[str]) -> str:
    """A test as the grader sent it (zlib-compressed, base64), which a submission may copy into a message."""
    try:
        zlib.decompress(base64.b64decode(found.group(0), validate=True))
    except (ValueError, zlib.error):
        return found.group(0)
    return "[hidden test]"


def _first_error(cell: NotebookNode) -> NotebookNode | None:
    return next((out for out in cell.get("outputs", []) if out.get("output_type") == "error"), None)


def _failure(cell: NotebookNode, visible_lines: int, redact: Redactor) -> tuple[str, str | None]:
    """Return (where it failed: "visible" / "hidden" / "grader", the message to show or None)."""
    error = _first_error(cell)
    if error is None:
        return "hidden", None
    name = str(error.get("ename", "Error"))
    value = ANSI.sub("", str(error.get("evalue", "")))
    if name in {"NotRun", "DeadKernelError", "CellTimeoutError", "TamperingDetected"}:  # the grader's own words
        return "grader", f"{name}: {value}"
    trace = ANSI.sub("", "\n".join(error.get("traceback", [])))
    line = CELL_LINE.search(trace)
    if line and int(line.group(1)) <= visible_lines:
        return "visible", redact(f"{name}: {value}".strip().rstrip(":"))[:2000]
    return "hidden", None


def render_page(assignment: str, student: str, result: GradeResult, graded: dict[str, NotebookNode],
                sources: dict[str, NotebookNode], releases: dict[str, NotebookNode]) -> str:
    """Return the HTML page of one submission's feedback."""
    redact = Redactor(list(sources.values()), list(releases.values()))
    esc = html.escape
    scores = {test.name: test for test in result.tests}
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(assignment)}: feedback for {esc(student)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(assignment)}: feedback for {esc(student)}</h1>",
        f'<p class="total">Score: <strong>{result.score:g} / {result.max_score:g}</strong></p>',
    ]
    if result.error:
        parts.append(f'<p class="error">{esc(redact(result.error))}</p>')
    for warning in result.warnings:
        parts.append(f'<p class="error">Warning: {esc(redact(warning))}</p>')
    if result.restored_cells:
        parts.append(f'<p class="note">Test cells missing from the submission were put back before grading: '
                     f'{esc(", ".join(result.restored_cells))}.</p>')
    rows = "".join(
        f"<tr><td>{esc(t.name)}</td><td>{t.score:g} / {t.max_score:g}</td>"
        f'<td class="{"pass" if t.passed else "fail"}">{"passed" if t.passed else "failed"}</td></tr>'
        for t in result.tests)
    parts.append(f"<table><tr><th>test</th><th>marks</th><th>result</th></tr>{rows}</table>")
    for name, source in sources.items():
        graded_cells = {nbgrader_meta(c).get("grade_id"): c for c in graded.get(name, NotebookNode(cells=[])).cells}
        released = {nbgrader_meta(c).get("grade_id"): c for c in releases[name].cells}
        for cell in source.cells:
            meta = nbgrader_meta(cell)
            if not meta.get("grade") or cell.cell_type != "code":
                continue
            grade_id = meta.get("grade_id")
            test = scores.get(grade_id)
            visible, hidden = split_hidden(cell.source)
            shown = released[grade_id].source if grade_id in released else visible
            parts.append(f"<h2>{esc(str(grade_id))}</h2>")
            if test is None:
                parts.append('<p class="note">not graded</p>')
                continue
            status = "pass" if test.passed else "fail"
            parts.append(f'<p>Marks: {test.score:g} / {test.max_score:g} &mdash; '
                         f'<span class="{status}">{"passed" if test.passed else "failed"}</span></p>')
            parts.append(f"<p>Visible tests:</p><pre>{esc(shown)}</pre>")
            where, message = ("", None)
            if not test.passed:
                where, message = _failure(graded_cells.get(grade_id, cell), len(visible.splitlines()), redact)
            if hidden:
                if test.passed:
                    hidden_status = '<span class="pass">passed</span>'
                elif where == "hidden":
                    hidden_status = '<span class="fail">failed</span>'
                else:
                    hidden_status = "not run"
                parts.append(f"<p>Hidden tests ({esc(str(grade_id))}): {hidden_status}</p>")
            if not test.passed:
                if message:
                    parts.append(f"<p>Error:</p><pre>{esc(message)}</pre>")
                elif where == "hidden" and not hidden:
                    parts.append('<p class="note">The test failed (no message).</p>')
    parts.append('<p class="note">Generated by llmcourse grade. Hidden tests are shown by name and '
                 "result only.</p></body></html>")
    return "\n".join(parts) + "\n"


def write_feedback(course: GradingCourse, submission: Submission, result: GradeResult,
                   feedback_dir: Path) -> list[Path]:
    """Write ``feedback_dir/<student>.html`` for a graded submission and return it in a list."""
    folder = course.root / "autograded" / submission.student_id / course.assignment
    graded = {}
    for name in course.release_notebooks:
        path = folder / f"{name}.ipynb"
        if path.is_file():
            graded[name] = nbformat.read(path, as_version=4)
    sources = {name: nbformat.read(course.source / f"{name}.ipynb", as_version=4) for name in course.release_notebooks}
    page = render_page(course.assignment, submission.student_id, result, graded, sources, course.release_notebooks)
    feedback_dir.mkdir(parents=True, exist_ok=True)
    target = feedback_dir / f"{submission.student_id}.html"
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return [target]
