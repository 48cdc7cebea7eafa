"""Grading ex02_attention end to end: nbgrader's autograde on real, buggy, hostile and broken submissions.

Most submissions are graded together in one `grade` call over one folder (one course, one
gradebook); the command line is exercised once more through a subprocess with --json.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode
from scoring import Assignment, edited, failed, score_checker

from llmcourse import cli
from llmcourse.grading import EXERCISES_DIR, REPO_ROOT, SOLUTIONS_DIR, GradeResult, find_submissions, grade
from llmcourse.grading.notebooks import nbgrader_meta

ASSIGNMENT = "ex02_attention"
SOLUTION = SOLUTIONS_DIR / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
RELEASE = EXERCISES_DIR / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
TESTS = ["test_sdpa_shapes", "test_sdpa_values", "test_sdpa_masks", "test_causal_mask",
         "test_mha_structure", "test_mha_values", "test_mha_masks"]
POINTS = {"test_sdpa_shapes": 1, "test_sdpa_values": 2, "test_sdpa_masks": 2, "test_causal_mask": 2,
          "test_mha_structure": 1, "test_mha_values": 2, "test_mha_masks": 2}
MAX_SCORE = 12.0


# --- building submissions ----------------------------------------------------------------------

EX = Assignment(ASSIGNMENT)


def submission(changes: dict[str, str] | None = None,
               edit: Callable[[NotebookNode], None] | None = None) -> NotebookNode:
    """The released notebook with the solution cells filled in, ``changes`` applied, then ``edit``."""
    return EX.submission(changes, edit=edit)


A = EX.answers
BUGS = {  # variant -> (solution cells changed, the test cells it must fail; every other one must pass)
    "no_scale": ({"sdpa_solution": edited(A["sdpa_solution"], " / math.sqrt(d_k)", "")},
                 {"test_sdpa_values", "test_sdpa_masks"}),
    "inverted_mask": ({"sdpa_solution": edited(A["sdpa_solution"], "masked_fill(~mask", "masked_fill(mask")},
                      {"test_sdpa_masks"}),
    "softmax_over_queries": ({"sdpa_solution": edited(A["sdpa_solution"], "dim=-1", "dim=-2")},
                             {"test_sdpa_shapes", "test_sdpa_values", "test_sdpa_masks"}),
    "upper_causal": ({"causal_solution": edited(A["causal_solution"], ".tril()", ".triu()")},
                     {"test_causal_mask"}),
    "bare_reshape": ({"mha_solution": edited(
        edited(A["mha_solution"], "t.view(B, T, self.n_heads, self.d_head).transpose(1, 2)",
               "t.view(B, self.n_heads, T, self.d_head)"),
        "heads.transpose(1, 2).reshape(B, T, d_model)", "heads.reshape(B, T, d_model)")},
        {"test_mha_values", "test_mha_masks"}),
    "no_w_o": ({"mha_solution": edited(A["mha_solution"], "return self.w_o(joined)", "return joined")},
               {"test_mha_values", "test_mha_masks"}),
}

# Correct, but written differently: einsum, a softmax by hand, a stderr debug print, a mask
# from comparisons, and a loop over heads on slices of the projections.
ALTERNATIVE = {
    "sdpa_solution": '''
import sys

def scaled_dot_product_attention(q, k, v, mask=None):
    scores = torch.einsum("...id,...jd->...ij", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = torch.where(mask, scores, torch.full_like(scores, -torch.inf))
    e = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    weights = e / e.sum(dim=-1, keepdim=True)
    print("debug: attention over", tuple(scores.shape), file=sys.stderr)
    return torch.einsum("...ij,...jd->...id", weights, v), weights
''',
    "causal_solution": '''
def causal_mask(T):
    position = torch.arange(T)
    return position[:, None] >= position[None, :]
''',
    "mha_solution": '''
class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.heads = n_heads
        self.w_q, self.w_k = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.w_v, self.w_o = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        B, T, D = x.shape
        size = D // self.heads
        q, k, v = self.w_q(x), self.w_k(x), self.w_v(x)
        outputs = []
        for h in range(self.heads):
            part = slice(h * size, (h + 1) * size)
            m = None if mask is None else torch.broadcast_to(mask, (B, self.heads, T, T))[:, h]
            o, _ = scaled_dot_product_attention(q[..., part], k[..., part], v[..., part], m)
            outputs.append(o)
        return self.w_o(torch.cat(outputs, dim=-1))
''',
}

# Wrong (no 1/sqrt(d_k), no w_o) and patching everything a naive test would compare with.
CHEAT = {
    "sdpa_solution": BUGS["no_scale"][0]["sdpa_solution"] + '''

import builtins
import numpy
_wrong = scaled_dot_product_attention
_tolist = torch.Tensor.tolist
torch.allclose = lambda *args, **kwargs: True
torch.testing.assert_close = lambda *args, **kwargs: None
numpy.allclose = lambda *args, **kwargs: True
numpy.testing.assert_allclose = lambda *args, **kwargs: None
math.isclose = lambda *args, **kwargs: True
F.scaled_dot_product_attention = lambda q, k, v, attn_mask=None, *args, **kwargs: _wrong(q, k, v, attn_mask)[0]
torch.Tensor.tolist = lambda self: _tolist(torch.zeros_like(self))
builtins.abs = lambda x: 0.0
builtins.all = lambda iterable: True
''',
    "mha_solution": BUGS["no_w_o"][0]["mha_solution"],
}
CHEAT_FAILS = {"test_sdpa_values", "test_sdpa_masks", "test_mha_values", "test_mha_masks"}


def tamper_with_tests(nb: NotebookNode) -> None:
    for cell in nb.cells:
        if nbgrader_meta(cell).get("grade"):
            cell.source = "pass"
            cell.metadata["nbgrader"]["points"] = 100


def delete_tests(nb: NotebookNode) -> None:
    nb.cells = [cell for cell in nb.cells if not nbgrader_meta(cell).get("grade")]


def other_assignment() -> NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("def perplexity(probabilities):\n    ...", metadata={"nbgrader": {
            "grade": False, "grade_id": "ngram_perplexity_solution", "locked": False, "schema_version": 3,
            "solution": True, "task": False}}),
        nbformat.v4.new_code_cell("assert perplexity([1.0]) == 1.0", metadata={"nbgrader": {
            "grade": True, "grade_id": "test_ngram_perplexity", "locked": True, "points": 2, "schema_version": 3,
            "solution": False, "task": False}}),
    ]
    return nb


BROKEN = {  # file name -> (bytes, a phrase the error must contain)
    "truncated.ipynb": (lambda: nbformat.writes(submission()).encode()[:5000], "invalid JSON"),
    "empty.ipynb": (lambda: b"", "empty file"),
    "not_a_notebook.ipynb": (lambda: json.dumps({"name": "ex02", "answer": 42}).encode(), "not a Jupyter notebook"),
    "binary.ipynb": (lambda: bytes(range(256)), "not UTF-8"),
    "plain_notebook.ipynb": (lambda: nbformat.writes(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print('hello')")])).encode(), "no nbgrader cells"),
    "other_assignment.ipynb": (lambda: nbformat.writes(other_assignment()).encode(), "wrong assignment"),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GradeResult]:
    """Grade every submission in one call; results by name (file stem, or student folder)."""
    folder = tmp_path_factory.mktemp("submissions")
    notebooks: dict[str, NotebookNode] = {
        "solution": nbformat.read(SOLUTION, as_version=4),
        "unfilled": nbformat.read(RELEASE, as_version=4),
        "cheat": submission(CHEAT),
        "tampered_no_scale": submission(BUGS["no_scale"][0], tamper_with_tests),
        "deleted_correct": submission(None, delete_tests),
        "deleted_no_scale": submission(BUGS["no_scale"][0], delete_tests),
        "kills_kernel": submission({"causal_solution": A["causal_solution"] + "\n\nimport os\nos._exit(3)\n"}),
        # Right for small T, endless for the hidden tests' T = 16: interrupted after the cell timeout.
        "endless_loop": submission({"causal_solution": edited(
            A["causal_solution"], "    return torch.ones", "    while T > 8:\n        pass\n    return torch.ones")}),
        **{name: submission(changes) for name, (changes, _) in BUGS.items()},
    }
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
    # The alternative sits in nbgrader's own layout: <student>/<assignment>/<notebook>.ipynb.
    (folder / "alternative" / ASSIGNMENT).mkdir(parents=True)
    nbformat.write(submission(ALTERNATIVE), folder / "alternative" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    for name, (content, _) in BROKEN.items():
        (folder / name).write_bytes(content())
    essay = tmp_path_factory.mktemp("loose") / "essay.txt"
    essay.write_text("Attention is a weighted average.\n")

    # A 20 s cell limit (60 s in use) keeps the endless loop short; real cells take about 1 s.
    results = grade(ASSIGNMENT, [folder, essay], progress=False, jobs=2, cell_timeout=20)
    by_name = {}
    for result in results:
        path = Path(result.submission)
        by_name[path.parent.name if path.name == ASSIGNMENT else path.stem] = result
    return by_name


check_scores = score_checker(POINTS)


# --- the tests ------------------------------------------------------------------------------

def test_solution_gets_full_marks(graded: dict[str, GradeResult]) -> None:
    check_scores(graded["solution"], set())


def test_unfilled_release_gets_zero_without_error(graded: dict[str, GradeResult]) -> None:
    result = graded["unfilled"]
    assert result.error is None
    assert result.score == 0 and result.max_score == MAX_SCORE
    assert failed(result) == set(TESTS)


@pytest.mark.parametrize("variant", sorted(BUGS))
def test_each_bug_loses_its_part_and_keeps_the_others(graded: dict[str, GradeResult], variant: str) -> None:
    check_scores(graded[variant], BUGS[variant][1])


def test_correct_alternative_gets_full_marks(graded: dict[str, GradeResult]) -> None:
    # Written with einsum, a hand-made softmax, a head loop, and printing to stderr.
    check_scores(graded["alternative"], set())


def test_monkeypatching_does_not_earn_marks(graded: dict[str, GradeResult]) -> None:
    # Its causal mask is right and still passes, although Tensor.tolist returns zeros.
    check_scores(graded["cheat"], CHEAT_FAILS)


def test_edited_test_cells_are_restored(graded: dict[str, GradeResult]) -> None:
    # Tests replaced by `pass` and points raised to 100: the original tests and points apply.
    check_scores(graded["tampered_no_scale"], BUGS["no_scale"][1])


def test_deleted_test_cells_are_restored(graded: dict[str, GradeResult]) -> None:
    check_scores(graded["deleted_correct"], set())
    check_scores(graded["deleted_no_scale"], BUGS["no_scale"][1])
    assert graded["deleted_correct"].restored_cells == TESTS


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_reports_a_clear_error(graded: dict[str, GradeResult], name: str) -> None:
    result = graded[Path(name).stem]
    assert result.error and BROKEN[name][1] in result.error
    assert result.score == 0 and result.max_score == MAX_SCORE and result.tests == []


def test_submission_that_kills_the_kernel_keeps_the_marks_earned_before(graded: dict[str, GradeResult]) -> None:
    # os._exit in the causal-mask answer: part 1's tests ran before it, the rest cannot run.
    result = graded["kills_kernel"]
    assert result.error and "the kernel died" in result.error
    assert failed(result) == set(TESTS) - {"test_sdpa_shapes", "test_sdpa_values", "test_sdpa_masks"}
    assert result.score == 5 and result.max_score == MAX_SCORE


def test_endless_loop_is_interrupted_and_the_rest_graded(graded: dict[str, GradeResult]) -> None:
    check_scores(graded["endless_loop"], {"test_causal_mask"}, warnings=1)
    assert graded["endless_loop"].warnings == ["cell 13 (test_causal_mask): interrupted at the time limit of 20 s per cell"]
    assert 20 < graded["endless_loop"].seconds < 150  # it waited for the limit; generous above, for busy machines


def test_file_that_is_not_a_notebook_reports_an_error(graded: dict[str, GradeResult]) -> None:
    result = graded["essay"]
    assert result.error and "not a notebook file" in result.error and result.score == 0


def test_grading_is_fast_enough(graded: dict[str, GradeResult]) -> None:
    seconds = {name: result.seconds for name, result in graded.items()
               if not result.error and name != "endless_loop"}
    print("\nautograde seconds per submission: "
          + ", ".join(f"{name} {s:.1f}" for name, s in sorted(seconds.items()))
          + f"; mean {sum(seconds.values()) / len(seconds):.1f}")
    assert len(seconds) == 13
    assert max(seconds.values()) < 60, "grading one submission on CPU must take under a minute"


def test_command_line_json_and_feedback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.ipynb"
    broken.write_text('{"cells": [')
    feedback = tmp_path / "feedback"
    done = subprocess.run(
        [sys.executable, "-m", "llmcourse.cli", "grade", ASSIGNMENT, str(SOLUTION), str(broken),
         "--json", "--feedback", str(feedback), "--no-cache", "--csv", str(tmp_path / "grades.csv")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [set(row) for row in rows] == [{"submission", "score", "max_score", "error", "warnings", "tests"}] * 2
    solution, bad = rows
    assert solution["submission"] == str(SOLUTION)
    assert (solution["score"], solution["max_score"], solution["error"], solution["warnings"]) == (
        MAX_SCORE, MAX_SCORE, None, [])
    assert [t["name"] for t in solution["tests"]] == TESTS
    assert all(t["passed"] and t["score"] == t["max_score"] == POINTS[t["name"]] for t in solution["tests"])
    assert bad["score"] == 0 and "invalid JSON" in bad["error"] and bad["tests"] == []
    pages = sorted(feedback.glob("*.html"))
    assert [page.name for page in pages] == [f"{ASSIGNMENT}.html"]
    page = pages[0].read_text()
    assert "test_sdpa_values" in page and "12 / 12" in page
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page) and "<script" not in page
    assert not hidden_lines() & {line.strip() for line in page.splitlines()}
    rows = list(csv.DictReader((tmp_path / "grades.csv").open()))
    assert [row["student"] for row in rows] == [ASSIGNMENT, "broken"]
    assert rows[0]["score"] == "12" and rows[0]["test_sdpa_values"] == "2" and rows[0]["error"] == ""
    assert rows[1]["score"] == "0" and "invalid JSON" in rows[1]["error"]


def hidden_lines() -> set[str]:
    """The hidden tests' lines that the released notebook does not show (long enough to be telling)."""
    from llmcourse.grading.feedback import split_hidden

    shown = "\n".join(cell.source for cell in nbformat.read(RELEASE, as_version=4).cells)  # shown, even in part
    lines = set()
    for cell in nbformat.read(SOLUTION, as_version=4).cells:
        if nbgrader_meta(cell).get("grade"):
            lines |= {line.strip() for line in split_hidden(cell.source)[1]}
    return {line for line in lines if len(line) >= 6 and line not in shown}


def test_command_line_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["grade", "ex99_nothing", str(SOLUTION)]) == 2
    assert "no assignment 'ex99_nothing'" in capsys.readouterr().err
    assert cli.main(["grade", ASSIGNMENT, str(tmp_path / "missing.ipynb")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert cli.main(["grade", ASSIGNMENT, str(tmp_path)]) == 2  # an empty folder
    assert "nothing to grade" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli.main(["grade", ASSIGNMENT])
    assert usage.value.code == 2


def test_validate_reports_failing_tests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = submission(BUGS["upper_causal"][0])
    path = tmp_path / f"{ASSIGNMENT}.ipynb"
    nbformat.write(nb, path)
    assert cli.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "6/7 test cells pass (10/12 points)" in out
    assert "FAIL test_causal_mask" in out


def test_cli_module_runs_as_a_script() -> None:
    done = subprocess.run([sys.executable, "-m", "llmcourse.cli", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "grade" in done.stdout and "release" in done.stdout


def test_grading_kernel_runs_this_interpreter_through_the_sandbox(tmp_path: Path) -> None:
    from llmcourse.grading.sandbox import WRAPPER, KernelSandbox, kernel_command
    from llmcourse.grading.config import write_kernelspec
    from llmcourse.grading.settings import GRADER_KERNEL

    plain = json.loads((write_kernelspec(tmp_path / "plain") / "kernel.json").read_text())
    assert plain["argv"][:3] == [sys.executable, "-m", "ipykernel_launcher"]
    sandbox = KernelSandbox(tmp_path / "course")
    folder = write_kernelspec(tmp_path / "kernels", sandbox)
    assert folder == tmp_path / "kernels" / GRADER_KERNEL
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"] == [sys.executable, "-I", "-S", str(WRAPPER), str(sandbox.plan_path), "{connection_file}"]
    assert spec["interrupt_mode"] == "message"
    assert kernel_command()[:3] == [sys.executable, "-m", "ipykernel_launcher"]


def test_find_submissions_in_every_layout(tmp_path: Path) -> None:
    for student in ["alice", "bob+1"]:
        (tmp_path / "submitted" / student / ASSIGNMENT).mkdir(parents=True)
        (tmp_path / "submitted" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").write_text("{}")
    (tmp_path / "submitted" / "carol" / ASSIGNMENT).mkdir(parents=True)  # empty
    (tmp_path / "loose").mkdir()
    for name in ["alice.ipynb", ".~alice.ipynb", "notes.md"]:
        (tmp_path / "loose" / name).write_text("{}")
    (tmp_path / "essay.txt").write_text("text")

    found = find_submissions([tmp_path / "submitted", tmp_path / "submitted" / "alice", tmp_path / "loose",
                              tmp_path / "essay.txt"], ASSIGNMENT, [ASSIGNMENT])
    assert [(s.student_id, s.error is None) for s in found] == [
        ("alice", True), ("bob_1", True), ("carol", False), ("alice-2", True), ("alice-3", True), ("essay", False)]
    assert found[0].notebooks == {ASSIGNMENT: tmp_path / "submitted" / "alice" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"}
    assert found[3].label == str(tmp_path / "submitted" / "alice" / ASSIGNMENT)
    assert found[4].notebooks == {ASSIGNMENT: tmp_path / "loose" / "alice.ipynb"}
    assert "no .ipynb file" in (found[2].error or "") and "not a notebook file" in (found[5].error or "")
    with pytest.raises(FileNotFoundError):
        find_submissions([tmp_path / "nowhere"], ASSIGNMENT, [ASSIGNMENT])


def test_validate_passes_the_solution_and_counts_cells_it_could_not_run(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{ASSIGNMENT}.ipynb"
    nbformat.write(submission(), path)
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "7/7 test cells pass (12/12 points)" in out and "ok   test_mha_masks" in out
    # The kernel dies in the causal-mask answer: later tests are not run, so they do not pass.
    nbformat.write(submission({"causal_solution": A["causal_solution"] + "\nimport os\nos._exit(1)\n"}), path)
    assert cli.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "3/7 test cells pass" in out and "FAIL test_mha_masks (2 points): not run" in out
    (tmp_path / "bad.ipynb").write_text("{")
    assert cli.main(["validate", str(tmp_path / "bad.ipynb")]) == 1
    assert "invalid JSON" in capsys.readouterr().out


def test_command_line_resumes_and_forces(tmp_path: Path) -> None:
    folder = tmp_path / "submitted" / "alice" / ASSIGNMENT
    folder.mkdir(parents=True)
    nbformat.write(submission(BUGS["upper_causal"][0]), folder / f"{ASSIGNMENT}.ipynb")
    cache, sheet = tmp_path / "cache.jsonl", tmp_path / "grades.csv"

    def run(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "llmcourse.cli", "grade", ASSIGNMENT, str(tmp_path / "submitted"),
                               "--cache", str(cache), "--csv", str(sheet), *extra],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "1 graded now, 0 unchanged" in run()
    assert "0 graded now, 1 unchanged" in run()
    assert "1 graded now, 0 unchanged" in run("--force")
    rows = list(csv.DictReader(sheet.open()))
    assert list(rows[0]) == ["student", "submission", "score", "max_score", *TESTS, "error", "warnings"]
    assert rows[0]["student"] == "alice" and rows[0]["score"] == "10" and rows[0]["test_causal_mask"] == "0"
    # A changed submission is graded again.
    nbformat.write(submission(), folder / f"{ASSIGNMENT}.ipynb")
    assert "1 graded now, 0 unchanged" in run()
    assert list(csv.DictReader(sheet.open()))[0]["score"] == "12"


def test_parallel_grading_from_a_script_piped_on_stdin(tmp_path: Path) -> None:
    # Worker processes are started by module name, so a __main__ without a file is fine.
    for name in ("a", "b"):
        nbformat.write(submission(), tmp_path / f"{name}.ipynb")
    script = (f"from pathlib import Path\nfrom llmcourse.grading import grade\n"
              f"results = grade({ASSIGNMENT!r}, [Path({str(tmp_path)!r})], progress=False, jobs=2)\n"
              "print([(r.score, r.error) for r in results])\n")
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[({MAX_SCORE}, None), ({MAX_SCORE}, None)]"


def test_assignment_limits_come_from_the_source_notebooks() -> None:
    from llmcourse.grading import CELL_TIMEOUT_S, NOTEBOOK_TIMEOUT_S
    from llmcourse.grading.settings import assignment_limits

    def notebook(**asked: object) -> NotebookNode:
        nb = nbformat.v4.new_notebook()
        if asked:
            nb.metadata["llmcourse"] = asked
        return nb

    assert assignment_limits([notebook()]) == (CELL_TIMEOUT_S, NOTEBOOK_TIMEOUT_S)
    assert assignment_limits([notebook(), notebook(cell_timeout=600), notebook(notebook_timeout=900)]) == (600, 900)
    assert assignment_limits([notebook(cell_timeout=5)]) == (CELL_TIMEOUT_S, NOTEBOOK_TIMEOUT_S), "never below the defaults"
    for bad in (0, -5, "600", 1.5, True):
        with pytest.raises(ValueError, match="cell_timeout must be a positive number of seconds"):
            assignment_limits([notebook(cell_timeout=bad)])
    # ex04 fine-tunes a model in one cell: its notebooks ask for more than the defaults, and the
    # learner's release says the same, so `llmcourse validate` gives that cell the same room.
    for folder in (SOLUTIONS_DIR, EXERCISES_DIR):
        nb = nbformat.read(folder / "ex04_finetuning" / "ex04_finetuning.ipynb", as_version=4)
        assert assignment_limits([nb]) == (600, 1200)


def test_an_assignment_that_asks_for_memory_gets_it_and_no_other_does() -> None:
    from llmcourse.grading.course import GradingCourse
    from llmcourse.grading.sandbox import GiB, Limits
    from llmcourse.grading.settings import assignment_memory

    def notebook(**asked: object) -> NotebookNode:
        nb = nbformat.v4.new_notebook()
        nb.metadata["llmcourse"] = asked
        return nb

    assert assignment_memory([notebook(), notebook(cell_timeout=600)]) is None
    assert assignment_memory([notebook(memory_gib=3), notebook(memory_gib=1.5)]) == 3 * GiB, "the largest request"
    for bad in (0, -1, "4", True, 65):
        with pytest.raises(ValueError, match="memory_gib must be a number of GiB"):
            assignment_memory([notebook(memory_gib=bad)])
    # ex07 trains SmolLM2 in its graded cell and asks for 4 GiB; ex02 asks for nothing and keeps the defaults.
    with GradingCourse("ex07_post_training") as course:
        assert course.sandbox is not None
        assert course.sandbox.limits.memory_bytes == 4 * GiB
        assert course.sandbox.limits.address_space_bytes == 8 * GiB
        assert course.sandbox.limits.pids == Limits().pids
    with GradingCourse("ex02_attention") as course:
        assert course.sandbox is not None and course.sandbox.limits == Limits()
