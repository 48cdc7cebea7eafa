"""Sphinx extension: a note under the title of every notebook page saying how to run it.

The book is built from committed outputs; a reader who wants to change the code needs to
know which file the page is and how to open it. The note names the notebook's path in the
repository and the two ways to run it (``make lab``, or the download button).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx


def _add_run_note(app: Sphinx, doctree: nodes.document) -> None:
    source = Path(app.env.doc2path(app.env.docname))
    if source.suffix != ".ipynb":
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        return
    path = source.relative_to(Path(app.srcdir)).as_posix()
    text = nodes.paragraph()
    text += nodes.Text("This page is the notebook ")
    text += nodes.literal(text=path)
    text += nodes.Text(". Run it yourself: ")
    text += nodes.literal(text="make lab")
    text += nodes.Text(" opens the course in JupyterLab, or take a copy with the download button at the top of "
                       "the page. Every output below came from running it; the course's tests run it again.")
    note = nodes.admonition("", nodes.title(text="Run this page"), text, classes=["tip", "run-this-page"])
    title_index = next((i for i, child in enumerate(section.children) if isinstance(child, nodes.title)), -1)
    section.insert(title_index + 1, note)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("doctree-read", _add_run_note)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
