"""Shared test settings: offline, headless, quiet."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory):
    """The HTML book, built once per test session into a temporary folder."""
    from pathlib import Path

    from llmcourse import book

    root = Path(__file__).resolve().parents[1]
    return book.build(root, output=tmp_path_factory.mktemp("book"))
