"""The released exercises in exercises/ are what nbgrader makes of solutions/, and reveal nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from traitlets.config.loader import PyFileConfigLoader

from llmcourse.grading import EXERCISES_DIR, REPO_ROOT, SOLUTIONS_DIR, assignment_names, comparable
from llmcourse.grading.course import check_unique_answer_ids
from llmcourse.grading.notebooks import nbgrader_meta

ASSIGNMENTS = assignment_names()


def test_there_are_assignments() -> None:
    assert "ex02_attention" in ASSIGNMENTS


@pytest.fixture(scope="module")
def fresh_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Regenerate every release the way `make release` does, but into a temporary folder."""
    out = tmp_path_factory.mktemp("exercises")
    done = subprocess.run(
        [sys.executable, "-m", "llmcourse.cli", "release", *ASSIGNMENTS, "--exercises", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"llmcourse release failed:\n{done.stdout}\n{done.stderr}"
    return out


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_release_is_fresh(assignment: str, fresh_release: Path) -> None:
    generated = sorted(p.name for p in (fresh_release / assignment).glob("*.ipynb"))
    committed = sorted(p.name for p in (EXERCISES_DIR / assignment).glob("*.ipynb"))
    assert committed == generated, (
        f"exercises/{assignment} holds {committed}, nbgrader makes {generated}: "
        "run `make release` and commit exercises/"
    )
    for name in generated:
        fresh = comparable(nbformat.read(fresh_release / assignment / name, as_version=4))
        saved = comparable(nbformat.read(EXERCISES_DIR / assignment / name, as_version=4))
        stale = [i for i, (a, b) in enumerate(zip(fresh, saved)) if a != b]
        assert len(fresh) == len(saved) and not stale, (
            f"exercises/{assignment}/{name} is stale (first differing cell: "
            f"{stale[0] if stale else min(len(fresh), len(saved))}): solutions/ changed since the last release; "
            "run `make release` and commit exercises/"
        )


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_reveals_no_solution_or_hidden_test(assignment: str) -> None:
    for path in (EXERCISES_DIR / assignment).glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(cell.source for cell in nb.cells)
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
        assert "_hidden_tests" not in text
        assert all(not cell.get("outputs") for cell in nb.cells), "released notebooks carry no outputs"
        solutions = [cell for cell in nb.cells if nbgrader_meta(cell).get("solution")]
        assert solutions and all("raise NotImplementedError()" in cell.source for cell in solutions)
        tests = [cell for cell in nb.cells if nbgrader_meta(cell).get("grade")]
        assert tests and all(nbgrader_meta(cell).get("locked") for cell in tests)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_source_has_points_visible_tests_and_hidden_tests(assignment: str) -> None:
    for path in (SOLUTIONS_DIR / assignment).glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        tests = [cell for cell in nb.cells if nbgrader_meta(cell).get("grade")]
        assert tests, f"{path} has no graded cell"
        for cell in tests:
            meta = nbgrader_meta(cell)
            assert meta["points"] > 0 and meta["locked"] and not meta["solution"], meta["grade_id"]
        visible = [cell.source.split("### BEGIN HIDDEN TESTS")[0] for cell in tests]
        assert any("assert" in text for text in visible), f"{path} shows learners no test"
        assert any("### END HIDDEN TESTS" in cell.source for cell in tests), f"{path} has no hidden tests"


def test_answer_ids_are_unique_across_assignments() -> None:
    check_unique_answer_ids(SOLUTIONS_DIR)


def test_nbgrader_config_maps_solutions_and_exercises() -> None:
    loader = PyFileConfigLoader("nbgrader_config.py", path=str(REPO_ROOT))
    config = loader.load_config()
    assert config.CourseDirectory.source_directory == "solutions"
    assert config.CourseDirectory.release_directory == "exercises"
    assert Path(config.CourseDirectory.root) == REPO_ROOT
    assert Path(config.Exchange.root).is_dir()
    assert config.Execute.timeout >= 60
    assert config.OverwriteCells.add_missing_cells is True
