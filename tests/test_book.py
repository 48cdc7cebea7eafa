"""The book builds offline with warnings as errors, and no page loads anything remote."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
REMOTE_LOAD = re.compile(r"""<(?:script|img|iframe|source)\b[^>]*\bsrc=["'](?:https?:)?//|<link\b[^>]*\bhref=["'](?:https?:)?//""", re.I)


def toc_files() -> list[str]:
    def walk(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["file"]] if "file" in node else []
            found += [node["root"]] if "root" in node else []
            return found + [f for value in node.values() for f in walk(value)]
        if isinstance(node, list):
            return [f for item in node for f in walk(item)]
        return []

    return walk(yaml.safe_load((ROOT / "_toc.yml").read_text()))


def test_every_toc_entry_exists_and_every_chapter_notebook_is_listed() -> None:
    listed = set(toc_files())
    for entry in listed:
        assert any((ROOT / f"{entry}{suffix}").is_file() for suffix in (".md", ".ipynb")), f"_toc.yml lists missing page {entry}"
    for page in list((ROOT / "chapters").rglob("*.ipynb")) + list((ROOT / "chapters").rglob("*.md")):
        if ".ipynb_checkpoints" not in page.parts:
            assert str(page.relative_to(ROOT).with_suffix("")) in listed, f"{page} is not in _toc.yml, so the book would skip it"


@pytest.fixture(scope="module")
def html(built_book: Path) -> Path:
    return built_book


def test_book_builds_and_loads_nothing_remote(html: Path) -> None:
    pages = sorted(html.rglob("*.html"))
    assert (html / "index.html") in pages
    for entry in toc_files():
        assert (html / f"{entry}.html").is_file(), f"no page built for {entry}"
    for page in pages:
        text = page.read_text(encoding="utf-8")
        hit = REMOTE_LOAD.search(text)
        assert hit is None, f"{page.relative_to(html)} loads a remote resource: {text[hit.start():hit.start() + 120]}"
    for css in html.rglob("*.css"):
        assert not re.search(r"@import\s+url\(\s*['\"]?https?:", css.read_text(encoding="utf-8", errors="ignore")), css


def test_maths_is_rendered_by_a_local_mathjax(html: Path) -> None:
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    pages_with_maths = 0
    for page in html.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if 'class="math' in text:
            pages_with_maths += 1
            assert re.search(r'<script[^>]+src="[^"]*_static/mathjax/tex-chtml\.js', text), f"{page} has maths but no local MathJax"
    assert pages_with_maths >= 2


def test_every_notebook_page_says_how_to_run_it_and_offers_the_notebook(html: Path) -> None:
    notebooks = [entry for entry in toc_files() if (ROOT / f"{entry}.ipynb").is_file()]
    assert notebooks
    for entry in notebooks:
        text = (html / f"{entry}.html").read_text(encoding="utf-8")
        assert "run-this-page" in text and f"{entry}.ipynb</span>" in text, f"{entry}: no 'Run this page' note"
        name = entry.rsplit("/", 1)[-1]
        link = re.search(rf'href="([^"]*_sources/{re.escape(entry)}\.ipynb)"', text)
        assert link, f"{entry}: no download link to {name}.ipynb"
        assert (html / f"_sources/{entry}.ipynb").is_file(), f"{entry}: the download link points to a missing file"


def test_every_chapter_links_its_exercise_and_the_glossary(html: Path) -> None:
    chapters = sorted(entry for entry in toc_files() if re.fullmatch(r"chapters/\d\d_\w+/index", entry))
    assert len(chapters) == 5, chapters
    for entry in chapters:
        hrefs = re.findall(r'href="([^"#]*)', (html / f"{entry}.html").read_text(encoding="utf-8"))
        for target in ("exercises.html", "appendix/glossary.html"):
            assert any(h.endswith(f"../{target}") for h in hrefs), f"{entry}: no link to {target}"
