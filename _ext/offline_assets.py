"""Sphinx extension: keep every page free of remote scripts and styles.

sphinx-thebe and a few theme features add ``https://`` script tags even when they are
switched off; a course that must work offline drops them before pages are written.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _is_remote(entry: Any) -> bool:
    name = entry[0] if isinstance(entry, tuple) else getattr(entry, "filename", entry)
    return isinstance(name, str) and (name.startswith("http://") or name.startswith("https://") or name.startswith("//"))


def _drop_remote_assets(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    for key in ("script_files", "css_files"):
        files = context.get(key)
        if files:
            context[key] = [entry for entry in files if not _is_remote(entry)]


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", _drop_remote_assets, priority=1000)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
