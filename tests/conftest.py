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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Their models are tiny: a second thread only adds synchronisation, and with two pytest-xdist
    workers on two cores, spinning OpenMP threads slow every step down many times over.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--warm-course-models", action="store_true",
        help="train any of the course's small models missing from the cache before the tests start "
             "(once, in the main process), so parallel workers never train the same model twice",
    )


def _models_named_in(paths: list[str]) -> list[str]:
    """Course models that the notebooks under ``paths`` load with ``load_course_model("name")``."""
    import re
    from pathlib import Path

    pattern = re.compile(r"load_course_model\(\s*\\?[\"']([\w.-]+)")
    names: set[str] = set()
    for path in map(Path, paths):
        for notebook in [path] if path.suffix == ".ipynb" else path.rglob("*.ipynb") if path.is_dir() else []:
            if ".ipynb_checkpoints" not in notebook.parts:
                names.update(pattern.findall(notebook.read_text(encoding="utf-8")))
    return sorted(names)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fill the course-model cache once, before pytest-xdist starts its workers (``make test`` asks).

    Only the models that the notebooks to be run load are trained, so a run that needs none costs nothing.
    """
    if hasattr(session.config, "workerinput") or not session.config.getoption("warm_course_models"):
        return
    import time

    from llmcourse import models

    paths = [arg.split("::")[0] for arg in session.config.args] or list(session.config.getini("testpaths"))
    for name in _models_named_in([str(session.config.rootpath / p) for p in paths]):
        if name not in models.course_models():
            continue  # a notebook's own error will say so
        start = time.perf_counter()
        models.load_course_model(name, progress=False)
        print(f"course model {name!r} ready in {time.perf_counter() - start:.1f} s")


# The slowest modules, slowest first (minutes each in a fresh-clone CI run on 2 cores). pytest-xdist
# hands whole modules to its two workers as they free up; starting with the longest ones keeps one
# worker from running a ten-minute notebook alone at the end while the other has nothing left.
# `make test` passes --no-loadscope-reorder so that xdist keeps this order (it would otherwise sort
# modules by their number of tests). A module missing from the list only runs later.
SLOWEST_FIRST = (
    "chapters/04_finetuning/02_strategies.ipynb",
    "chapters/03_pretraining/04_scaling_and_cost.ipynb",
    "chapters/04_finetuning/04_hugging_face_way.ipynb",
    "chapters/04_finetuning/01_fine_tuning_step_by_step.ipynb",
    "tests/test_grading_ex04.py",
    "chapters/04_finetuning/05_fine_tuning_a_gpt.ipynb",
    "chapters/04_finetuning/03_overfitting.ipynb",
    "tests/test_grading_ex03.py",
    "solutions/ex04_finetuning/ex04_finetuning.ipynb",
    "tests/test_hostile.py",
    "tests/test_grading.py",
    "chapters/03_pretraining/02_training_a_gpt.ipynb",
    "tests/test_grading_ex05.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the slowest modules first; the order of the tests inside a module is kept."""
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # a stable sort
