"""Build the Jupyter Book offline: vendor MathJax locally, then run ``jupyter-book build``.

Usage: ``python -m llmcourse.book build [--root DIR] [--output DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def mathjax_source() -> Path:
    """Return the folder of MathJax's es5 bundle shipped by ``django-static-mathjax``."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "MathJax files not found: install the pinned requirements "
            "(package django-static-mathjax), e.g. by running `make book`."
        )
    es5 = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").is_file():
        raise RuntimeError(f"MathJax's tex-chtml.js is missing under {es5}; reinstall django-static-mathjax.")
    return es5


def vendor_mathjax(root: Path) -> Path:
    """Copy MathJax into ``root/_vendor/mathjax`` (once) so pages load it from the book itself."""
    target = root / "_vendor" / "mathjax"
    if not (target / "tex-chtml.js").is_file():
        source = mathjax_source()
        if target.exists():
            shutil.rmtree(target)
        # The speech-rule engine (sre) is large and only used by optional accessibility menus.
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("sre", "*.map"))
    return target


def build(root: Path = REPO_ROOT, output: Path | None = None, fresh: bool = False) -> Path:
    """Build the HTML book of ``root`` into ``output/_build/html`` with warnings as errors."""
    vendor_mathjax(root)
    out = output or root
    if fresh and (out / "_build").exists():
        shutil.rmtree(out / "_build")
    cmd = [
        str(Path(sys.executable).with_name("jupyter-book")), "build", str(root),
        "--path-output", str(out), "--warningiserror", "--keep-going",
    ]
    done = subprocess.run(cmd, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"Book build failed (exit {done.returncode}); the warnings above say which page and why.")
    return out / "_build" / "html"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.book", description=__doc__)
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--root", type=Path, default=REPO_ROOT)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--fresh", action="store_true", help="remove the previous build first")
    args = parser.parse_args(argv)
    try:
        html = build(args.root.resolve(), args.output.resolve() if args.output else None, args.fresh)
    except RuntimeError as err:
        raise SystemExit(str(err)) from None
    print(f"Book written to {html / 'index.html'}")


if __name__ == "__main__":
    main()
