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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--warm-course-models", action="store_true",
        help="train any of the course's small models missing from the cache before the tests start "
             "(once, in the main process), so parallel workers never train the same model twice",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fill the course-model cache once, before pytest-xdist starts its workers (``make test`` asks)."""
    if hasattr(session.config, "workerinput") or not session.config.getoption("warm_course_models"):
        return
    import time

    from llmcourse import models

    for name in models.course_models():
        start = time.perf_counter()
        models.load_course_model(name, progress=False)
        print(f"course model {name!r} ready in {time.perf_counter() - start:.1f} s")
