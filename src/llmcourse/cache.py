"""Where the course keeps what it makes once: its trained models, converted checkpoints, grades.

One folder, ``$LLMCOURSE_CACHE`` or ``~/.cache/llmcourse``: the models (``llmcourse.models``),
and, kept out of every grading sandbox, the grading results and nbgrader's exchange
(``llmcourse.grading.settings``). Importing this module imports nothing heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The course's cache folder: ``$LLMCOURSE_CACHE`` or ``~/.cache/llmcourse`` (not created here)."""
    return Path(os.environ.get("LLMCOURSE_CACHE") or Path.home() / ".cache" / "llmcourse").expanduser()
