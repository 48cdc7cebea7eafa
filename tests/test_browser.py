"""The rendered book in a real browser (Debian's Chromium driven by Playwright), offline.

Every page of the table of contents opens, maths is typeset by the local MathJax (no raw TeX
left), images load, the sidebar navigates, search finds a term, and no request leaves
localhost. Screenshots of the landing page and one page per chapter are saved under
``_build/screenshots`` as artifacts.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pinned in requirements.txt)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed; `make test` installs Debian's chromium where apt and root allow it"
)


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(built_book: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(built_book)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture()
def page(browser: object) -> Iterator[tuple[object, list[str]]]:
    """A fresh page that refuses, and records, every request not aimed at localhost."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    remote: list[str] = []

    def guard(route: object) -> None:
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            remote.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    tab = context.new_page()
    yield tab, remote
    context.close()


PROSE_TEXT = """() => {
  const article = document.querySelector("article").cloneNode(true);
  article.querySelectorAll("pre, .highlight, mjx-container, script, style").forEach(e => e.remove());
  return article.textContent;
}"""


WIDE_TEXT_BLOCKS = """() => [...document.querySelectorAll("article div.highlight-text pre")]
  .filter(p => !p.closest(".cell") && p.scrollWidth > p.clientWidth + 2)
  .map(p => p.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), ""))"""

WIDE_CODE_CELLS = """() => [...document.querySelectorAll("article div.cell_input pre")]
  .filter(p => p.scrollWidth > p.clientWidth + 2)
  .map(p => p.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), ""))"""

COURSE_STYLE = """() => [...document.styleSheets].some(s => (s.href || "").includes("/_static/llmcourse.css"))"""


def wait_for_maths(tab: object) -> int:
    """Wait until MathJax has typeset the page; return the number of typeset formulas."""
    has_mathjax = tab.evaluate("() => typeof window.MathJax !== 'undefined' && !!window.MathJax.startup")
    if not has_mathjax:
        return 0
    tab.wait_for_function("() => window.MathJax.startup.promise !== undefined", timeout=20_000)
    tab.evaluate("() => window.MathJax.startup.promise")
    return tab.locator("mjx-container").count()


def test_every_page_renders_maths_and_images_offline(site: str, page: tuple[object, list[str]]) -> None:
    tab, remote = page
    SHOTS.mkdir(parents=True, exist_ok=True)
    pages = toc_pages()
    typeset_total = 0
    for entry in pages:
        response = tab.goto(f"{site}/{entry}.html", wait_until="load")
        assert response is not None and response.ok, f"{entry}: HTTP {response.status if response else 'no response'}"
        typeset = wait_for_maths(tab)
        typeset_total += typeset
        # Prose only: code cells legitimately hold TeX (matplotlib labels).
        text = tab.evaluate(PROSE_TEXT)
        leftover = re.search(r"\$\$|\\frac|\\sqrt|\\mathbb|\\operatorname|\\top\b", text)
        assert leftover is None, f"{entry}: raw TeX left visible: {text[max(0, leftover.start() - 60):leftover.end() + 20]!r}"
        broken = tab.evaluate("() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert broken == [], f"{entry}: images that did not load: {broken[:3]}"
        # Text diagrams and listings in the prose, and the code of every cell, fit the column of a
        # 1280-pixel screen (tests/test_code_width.py keeps code lines to 88 characters; outputs may scroll).
        wide = tab.evaluate(WIDE_TEXT_BLOCKS)
        assert wide == [], f"{entry}: text blocks wider than the page, shorten their lines: {wide[:2]}"
        wide = tab.evaluate(WIDE_CODE_CELLS)
        assert wide == [], f"{entry}: code cells that scroll sideways, wrap their lines: {wide[:2]}"
        assert tab.evaluate(COURSE_STYLE), f"{entry}: the course stylesheet (_static/llmcourse.css) is not applied"
        if entry == pages[0] or entry.endswith("/index"):
            name = "landing" if entry == pages[0] else entry.split("/")[-2]
            tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)
    assert typeset_total >= 20, f"only {typeset_total} formulas typeset across the book"
    assert remote == [], f"requests left localhost: {remote[:5]}"


def test_sidebar_navigates_between_chapters(site: str, page: tuple[object, list[str]]) -> None:
    tab, remote = page
    tab.goto(f"{site}/intro.html")
    links = tab.locator("nav.bd-links a.reference.internal")
    assert links.count() >= len(toc_pages()) - 1
    # Chapter entries are visible from the landing page; their sections once the chapter is open.
    tab.locator('nav.bd-links a.reference.internal[href="chapters/02_attention/index.html"]').click()
    tab.wait_for_url(re.compile(r".*/chapters/02_attention/index\.html.*"))
    tab.locator('nav.bd-links a.reference.internal[href="01_scaled_dot_product.html"]').click()
    tab.wait_for_url(re.compile(r".*/chapters/02_attention/01_scaled_dot_product\.html.*"))
    assert tab.locator("h1").first.inner_text().startswith("Scaled dot-product attention")
    assert remote == []


def test_search_finds_a_term(site: str, page: tuple[object, list[str]]) -> None:
    tab, remote = page
    tab.goto(f"{site}/search.html?q=softmax")
    results = tab.locator("#search-results ul.search li")
    results.first.wait_for(timeout=20_000)
    assert results.count() >= 2
    hrefs = [results.nth(i).locator("a").first.get_attribute("href") for i in range(results.count())]
    assert any("02_attention" in (href or "") for href in hrefs), hrefs
    assert remote == []
