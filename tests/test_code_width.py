"""The chapters' code fits the book's column: no code line wider than 88 characters.

The rendered book shows about 88 characters of code at a 1280-pixel screen; a longer line makes
its cell scroll sideways, and a reader scrolls past the end of the line they are reading
(issue 20). 88 is black's width too, so ``black --ipynb --line-length 88`` lays out most cells,
and long strings and comments are wrapped by hand. ``tests/test_browser.py`` checks the rendered
result: no code cell's input scrolls. Outputs may be wider (a table, a long sample).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 88
NOTEBOOKS = sorted((ROOT / "chapters").glob("*/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "chapters")))
def test_no_code_line_is_wider_than_the_column(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    wide = [
        f"cell {index}, line {number}: {len(line)} characters: {line[:60]}..."
        for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
        for number, line in enumerate(cell.source.splitlines(), start=1) if len(line) > WIDTH
    ]
    assert wide == [], f"{len(wide)} code lines wider than {WIDTH} characters (wrap them): " + "; ".join(wide[:3])
