"""The suite's own scheduling list (conftest.SLOWEST_FIRST) names files that exist."""

from __future__ import annotations

from pathlib import Path

from conftest import SLOWEST_FIRST

ROOT = Path(__file__).resolve().parents[1]


def test_slowest_first_names_existing_modules() -> None:
    missing = [path for path in SLOWEST_FIRST if not (ROOT / path).is_file()]
    assert missing == [], f"renamed or removed, update SLOWEST_FIRST in tests/conftest.py: {missing}"
    assert len(set(SLOWEST_FIRST)) == len(SLOWEST_FIRST)
