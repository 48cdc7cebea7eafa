"""The suite's own scheduling and time budget (tests/budget.toml, read by conftest.py) make sense."""

from __future__ import annotations

from pathlib import Path

from conftest import BUDGET, SLOWEST_FIRST, budget_report

ROOT = Path(__file__).resolve().parents[1]


def test_budget_names_existing_modules() -> None:
    missing = [path for path in BUDGET["modules"] if not (ROOT / path).is_file()]
    assert missing == [], f"renamed or removed, update tests/budget.toml: {missing}"


def test_slowest_modules_run_first() -> None:
    seconds = [BUDGET["modules"][path] for path in SLOWEST_FIRST]
    assert seconds == sorted(seconds, reverse=True) and len(SLOWEST_FIRST) == len(BUDGET["modules"])


def test_budgets_fit_the_target() -> None:
    # The slow modules' budgets (each with its margin), shared by the workers, fit the whole run's target:
    # a new slow notebook must make room for itself (a faster path, a smaller budget, a cached artefact).
    assert sum(BUDGET["modules"].values()) / BUDGET["workers"] <= BUDGET["pytest_seconds"]


def test_budget_report_flags_slow_and_unlisted_modules() -> None:
    budget = {"modules": {"a.ipynb": 100, "b.py": 10}, "tolerance": 1.5, "unlisted_seconds": 60}
    seconds = {"a.ipynb": 149.0, "b.py": 16.0, "c.py": 61.0, "d.py": 1.0}
    lines, over = budget_report(seconds, budget, top=3)
    assert len(lines) == 4 and lines[1].split()[-1] == "a.ipynb" and f"{149 / 227:.1%}" in lines[1]
    assert [line.split(":")[0] for line in over] == ["b.py", "c.py"]


def test_notebook_kernels_use_unix_sockets_and_report_a_kernel_that_dies(tmp_path, monkeypatch) -> None:
    import json
    import sys

    import pytest
    from nbval import kernel

    started = kernel.RunningKernel("python3")
    try:
        assert started.km.transport == "ipc"  # no TCP port for another process to take first
        reply = started.kc.execute_interactive("x = 6 * 7", timeout=30)
        assert reply["content"]["status"] == "ok"
    finally:
        started.kc.stop_channels()
        started.km.shutdown_kernel(now=True)

    spec = tmp_path / "kernels" / "dies"  # a kernel that writes a reason and exits at once
    spec.mkdir(parents=True)
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('no room at the inn'); sys.exit(3)"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv + ["{connection_file}"], "display_name": "dies",
                                                  "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with pytest.warns(UserWarning, match="no room at the inn"), \
            pytest.raises(RuntimeError, match=r"(?s)3 tries.*no room at the inn"):
        kernel.RunningKernel("dies", startup_timeout=20)
