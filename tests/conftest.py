"""Shared test settings: offline, headless, quiet."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _share_the_cores() -> None:
    """In a pytest-xdist worker, give each worker its share of the cores (``OMP_NUM_THREADS``).

    Set before torch is imported, so that this process and every kernel it starts (nbval's notebooks,
    the grader's sandboxed kernels) keep to it. Without it, two workers on two cores each run a kernel
    with two OpenMP threads, which spin while they wait for each other: a MiniLM training step took
    1.2 s instead of 0.47 s with one thread each (measured on this project's 2-core machines).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = str(max(1, cores // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads


_share_the_cores()


def _start_nbval_kernels_safely() -> None:
    """nbval's kernels on Unix sockets, started up to three times, with the reason when one dies.

    nbval starts each notebook's kernel on five TCP ports that jupyter_client picks by binding port 0 and
    letting it go; another process can take one of them before the kernel binds it, and the kernel then
    exits ("Kernel died before replying to kernel_info"). That happened once in CI, with two workers and
    the grader's kernels starting beside each other, and failed a whole notebook. Unix sockets in a folder
    of the kernel's own cannot collide (the grader's kernels use them too), and nbval sends the kernel's
    stderr to /dev/null, so a start that still fails is retried and its stderr is shown.
    """
    try:
        from jupyter_client import KernelManager
        from nbval import kernel as nbval_kernel
    except ImportError:  # nbval missing: nothing runs notebooks
        return
    import atexit
    import shutil
    import tempfile
    import warnings

    sockets = tempfile.mkdtemp(prefix="nbval-kernels-")
    atexit.register(shutil.rmtree, sockets, True)

    def start_new_kernel(startup_timeout: float = 60, kernel_name: str = "python", **kwargs):
        kwargs.pop("stderr", None)
        for attempt in range(1, 4):
            stderr = tempfile.TemporaryFile()
            manager = KernelManager(kernel_name=kernel_name, kernel_spec_manager=nbval_kernel.NbvalKernelspecManager(),
                                    transport="ipc", ip=tempfile.mktemp(dir=sockets, prefix="k"))
            manager.start_kernel(stderr=stderr, **kwargs)
            client = manager.client()
            client.start_channels()
            try:
                client.wait_for_ready(timeout=startup_timeout)
                return manager, client
            except RuntimeError as error:
                client.stop_channels()
                manager.shutdown_kernel(now=True)
                stderr.seek(0)
                said = stderr.read()[-3000:].decode(errors="replace").strip() or "(nothing on stderr)"
                if attempt == 3:
                    raise RuntimeError(f"{error} (3 tries); the kernel's stderr:\n{said}") from error
                warnings.warn(f"a notebook kernel did not start ({error}), trying again; its stderr: {said}")
        raise AssertionError("unreachable")

    nbval_kernel.start_new_kernel = start_new_kernel


_start_nbval_kernels_safely()


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


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fill the course-model cache once, before pytest-xdist starts its workers (``make test`` asks for it).

    Only the models that the notebooks to be run load are trained, so a run that needs none costs nothing.
    The time budget's clock starts after this warm-up.
    """
    import time

    if hasattr(session.config, "workerinput"):
        return
    if session.config.getoption("warm_course_models"):
        from llmcourse import models

        paths = [arg.split("::")[0] for arg in session.config.args] or list(session.config.getini("testpaths"))
        for name in models.models_used_by([session.config.rootpath / p for p in paths]):
            start = time.perf_counter()
            models.prepare_model(name)
            print(f"model {name!r} ready in {time.perf_counter() - start:.1f} s")
    _STARTED.append(time.perf_counter())


def _read_budget() -> dict:
    """``tests/budget.toml``: the seconds each slow module may take, and the whole run's target."""
    import tomllib
    from pathlib import Path

    with open(Path(__file__).with_name("budget.toml"), "rb") as file:
        return tomllib.load(file)


BUDGET = _read_budget()

# The slowest modules, slowest first: the modules of tests/budget.toml by their budget. pytest-xdist hands
# whole modules to its two workers as they free up; starting with the longest ones keeps one worker from
# running a long notebook alone at the end while the other has nothing left. `make test` passes
# --no-loadscope-reorder so that xdist keeps this order (it would otherwise sort modules by their number
# of tests). A module missing from the budget runs later.
SLOWEST_FIRST = tuple(sorted(BUDGET["modules"], key=lambda path: -BUDGET["modules"][path]))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the slowest modules first; the order of the tests inside a module is kept."""
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # a stable sort


# ---------------------------------------------------------------------------------------------
# The time budget: seconds per module (setup, every test and teardown added up), reported at the end.

_SECONDS: dict[str, float] = {}
_STARTED: list[float] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up each module's time (in the main process, from every worker's reports)."""
    module = report.nodeid.split("::")[0]
    _SECONDS[module] = _SECONDS.get(module, 0.0) + report.duration


def budget_report(seconds: dict[str, float], budget: dict, top: int = 10) -> tuple[list[str], list[str]]:
    """Lines of the ten slowest modules (seconds, share of all test time, budget) and the modules over budget.

    A module is over budget when it took more than its seconds in ``budget["modules"]`` times
    ``budget["tolerance"]``, or more than ``budget["unlisted_seconds"]`` with no budget of its own.
    """
    total = sum(seconds.values()) or 1.0
    allowed = budget["modules"]
    lines = [f"{'seconds':>8} {'share':>6} {'budget':>7}  module"]
    over = []
    for module, spent in sorted(seconds.items(), key=lambda item: -item[1])[:top]:
        limit = allowed.get(module)
        lines.append(f"{spent:8.0f} {spent / total:6.1%} {limit if limit is not None else '-':>7}  {module}")
    for module, spent in seconds.items():
        limit = allowed.get(module)
        if limit is not None and spent > limit * budget["tolerance"]:
            over.append(f"{module}: {spent:.0f} s, budget {limit} s")
        elif limit is None and spent > budget["unlisted_seconds"]:
            over.append(f"{module}: {spent:.0f} s with no budget (add it to tests/budget.toml)")
    return lines, over


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the slowest modules with their share of the run, and any module over its budget."""
    if hasattr(config, "workerinput") or not _SECONDS:
        return
    import time

    lines, over = budget_report(_SECONDS, BUDGET)
    wall = time.perf_counter() - _STARTED[0] if _STARTED else float("nan")
    terminalreporter.section("time budget (tests/budget.toml)")
    terminalreporter.write_line(f"{sum(_SECONDS.values()):.0f} s of test time in {wall:.0f} s of wall time "
                                f"(target {BUDGET['pytest_seconds']} s); the slowest modules:")
    for line in lines:
        terminalreporter.write_line(line)
    for line in over:
        terminalreporter.write_line(f"OVER BUDGET: {line}", yellow=True)
    record = config.rootpath / "_build" / "test_times.json"  # every module, for whoever updates the budget
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps({"wall_seconds": round(wall, 1), "modules": {
        module: round(spent, 1) for module, spent in sorted(_SECONDS.items(), key=lambda item: -item[1])}}, indent=1))
    terminalreporter.write_line(f"every module's time: {record.relative_to(config.rootpath)}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``LLMCOURSE_STRICT_BUDGET=1``, a module over its budget fails the run (after its report)."""
    if hasattr(session.config, "workerinput") or os.environ.get("LLMCOURSE_STRICT_BUDGET") != "1":
        return
    if budget_report(_SECONDS, BUDGET)[1] and session.exitstatus == 0:
        session.exitstatus = 1
