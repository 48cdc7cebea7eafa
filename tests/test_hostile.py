"""Hostile submissions: each gets a row with the marks it earned and a clear error; nothing leaks or survives.

All of them are graded in one `grade` call with two workers, short limits (10 s a cell, 40 s a
notebook), feedback pages and a results cache. Each attack is written so that **if it works,
the submission loses marks** (it breaks its own `causal_mask`, worth 2 points): full marks
mean the sandbox stopped it. Attacks that end the kernel sit in the causal-mask answer, after
part 1's tests (5 points), so their rows must keep those 5 points.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode

from llmcourse.grading import EXERCISES_DIR, REPO_ROOT, SOLUTIONS_DIR, GradeResult, Limits, grade, probe
from llmcourse.grading.feedback import split_hidden
from llmcourse.grading.notebooks import nbgrader_meta
from llmcourse.grading.sandbox import RUN_MARKER

ASSIGNMENT = "ex02_attention"
SOLUTION = SOLUTIONS_DIR / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
RELEASE = EXERCISES_DIR / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
TESTS = ["test_sdpa_shapes", "test_sdpa_values", "test_sdpa_masks", "test_causal_mask",
         "test_mha_structure", "test_mha_values", "test_mha_masks"]
PART1 = {"test_sdpa_shapes", "test_sdpa_values", "test_sdpa_masks"}
MAX_SCORE = 12.0
CELL_TIMEOUT, NOTEBOOK_TIMEOUT = 10, 40
MARKER = "llmcourse_hostile_marker_7f3a"  # in the command line of every process a submission leaves

SUPPORT = probe()
needs_bwrap = pytest.mark.skipif(not SUPPORT.sandboxed, reason=f"no bubblewrap sandbox here: {SUPPORT.problems}")
needs_cgroups = pytest.mark.skipif(set(SUPPORT.cgroups) != {"memory", "pids"},
                                   reason=f"no memory and pids cgroups (v1 or v2) here: {SUPPORT.problems}")

SABOTAGE = '''
def causal_mask(T):  # the attack worked: lose the causal-mask marks
    return torch.ones(T, T, dtype=torch.bool)
'''


def answers() -> dict[str, str]:
    nb = nbformat.read(SOLUTION, as_version=4)
    return {nbgrader_meta(c)["grade_id"]: "\n".join(line for line in c.source.splitlines() if "### " not in line)
            for c in nb.cells if nbgrader_meta(c).get("solution")}


def submission(causal_extra: str = "", after_part1: list[str] | None = None) -> NotebookNode:
    """The released notebook, answered correctly, with ``causal_extra`` run after the causal-mask answer
    and extra code cells ``after_part1`` inserted after part 1's last test."""
    nb = nbformat.read(RELEASE, as_version=4)
    filled = answers()
    filled["causal_solution"] += "\n" + causal_extra
    for cell in nb.cells:
        if nbgrader_meta(cell).get("solution"):
            cell.source = filled[nbgrader_meta(cell)["grade_id"]]
    if after_part1:
        at = next(i for i, c in enumerate(nb.cells) if nbgrader_meta(c).get("grade_id") == "test_sdpa_masks") + 1
        nb.cells[at:at] = [nbformat.v4.new_code_cell(code) for code in after_part1]
    return nb


def attack(code: str, worked: str) -> str:
    """Run ``code``; if the expression ``worked`` is then true, sabotage the answer."""
    return f"{code}\nif {worked}:\n" + "\n".join("    " + line for line in SABOTAGE.strip().splitlines())


LISTENER = socket.socket()
LISTENER.bind(("127.0.0.1", 0))
PORT = LISTENER.getsockname()[1]

HOSTILE = {  # name -> notebook
    "endless_loop_ignoring_interrupts": submission(
        "while True:\n    try:\n        while True:\n            pass\n    except KeyboardInterrupt:\n        pass"),
    "slow_notebook": submission(after_part1=["import time\ntime.sleep(8)"] * 6),
    "memory_hog": submission("hog = [bytearray(64 * 2**20) for _ in range(64)]  # 4 GiB, touched"),
    "huge_allocation": submission(attack(
        "try:\n    big = bytearray(8 * 2**30)\n    ok = True\nexcept MemoryError:\n    ok = False", "ok")),
    "kills_its_parent_and_group": submission(  # dangerous unsandboxed: only graded in the sandbox
        "import os, signal, time\nfor pid in [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    if pid != os.getpid():\n        try:\n            os.kill(pid, signal.SIGKILL)\n"
        "        except OSError:\n            pass\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(1)\n"
        "os.killpg(0, signal.SIGKILL)"),
    "fork_bomb": submission(attack(
        "import os\nchildren = 0\ntry:\n    while children < 400:\n        if os.fork() == 0:\n"
        f"            os.execv('/bin/sh', ['sh', '-c', 'sleep 100000', '{MARKER}'])\n"
        "        children += 1\nexcept OSError as error:\n    print('fork stopped:', error)",
        "children >= 400")),
    "daemon_left_running": submission(
        "import subprocess\n"
        f"subprocess.Popen(['/bin/sh', '-c', 'sleep 100000', '{MARKER}'], start_new_session=True, env={{}},\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"),
    "huge_files": submission(attack(
        "import os\nwritten = 0\nfor path in ['big.bin', '/tmp/big1', '/tmp/big2', '/tmp/big3', '/tmp/big4', '/tmp/big5']:\n"
        "    try:\n        with open(path, 'wb') as f:\n            for _ in range(20):\n"
        "                f.write(b'0' * (5 * 2**20))\n                written += 5 * 2**20\n"
        "    except OSError as error:\n        print(path, error)\n"
        "for path in ['/tmp/big1', '/tmp/big2', '/tmp/big3', '/tmp/big4', '/tmp/big5']:\n"
        "    if os.path.exists(path):\n        os.remove(path)\n"
        "print('written', written)\ntoo_big = os.path.exists('big.bin') and os.path.getsize('big.bin') > 64 * 2**20",
        "too_big or written > 400 * 2**20")),
    "reads_and_writes_secrets": submission(attack(
        "import glob, os\nfound = []\n"
        f"for pattern in [{str(SOLUTION)!r}, {str(REPO_ROOT / 'solutions' / '*' / '*.ipynb')!r},\n"
        "                '../../solutions/*/*.ipynb', '../*/*.ipynb', '../../*/*/*/*.ipynb', '../../gradebook.db',\n"
        "                '../../../gradebook.db', '/tmp/*/gradebook.db', '/tmp/*/autograded/*/*/*.ipynb',\n"
        "                '/root/.bash_history', '/etc/shadow']:\n"
        "    for path in glob.glob(pattern):\n        try:\n            with open(path, 'rb') as f:\n"
        "                if f.read(100):\n                    found.append(path)\n        except OSError:\n            pass\n"
        f"for path in [{str(REPO_ROOT / 'src' / 'llmcourse' / 'pwned.py')!r}, '/usr/pwned', "
        f"{str(Path(sys.prefix) / 'pwned')!r}]:\n"
        "    try:\n        with open(path, 'w') as f:\n            f.write('x')\n        found.append(path)\n"
        "    except OSError:\n        pass\nprint(found)", "found")),
    "network": submission(attack(
        f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {PORT}), timeout=3).close()\n    connected = True\n"
        "except OSError as error:\n    connected = False\n    print('no network:', error)", "connected")),
    "enormous_output": submission(
        "print('x' * 30_000_000)\nfor i in range(100_000):\n    print(i, 'y' * 50)\n"
        "from IPython.display import display\nhandle = display({'text/plain': 'small'}, raw=True, display_id=True)\n"
        "for _ in range(20):\n    handle.update({'text/plain': 'z' * 2_000_000}, raw=True)\n"
        "import ipywidgets\nbox = ipywidgets.Output()\ndisplay(box)\nwith box:\n    print('w' * 5_000_000)"),
    "leaks_hidden_tests": submission(
        "_seen = []\nget_ipython().events.register('pre_run_cell', lambda info: _seen.append(info.raw_cell))\n"
        "def causal_mask(T):\n    print(_seen[-1])\n    raise ValueError('\\n'.join(_seen[-1:]))"),
    "tampers_with_execution": submission(
        "get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])"),
}
DANGEROUS = {"kills_its_parent_and_group", "reads_and_writes_secrets"}  # unsandboxed they would really do it
if not SUPPORT.sandboxed:
    HOSTILE = {name: nb for name, nb in HOSTILE.items() if name not in DANGEROUS}

BROKEN = {
    "garbage.ipynb": b"\xff\xfe\x00 not json",
    "half.ipynb": nbformat.writes(submission()).encode()[:3000],
    "wrong_assignment.ipynb": nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "x = 1", metadata={"nbgrader": {"grade": False, "grade_id": "some_other_answer", "locked": False,
                                         "schema_version": 3, "solution": True, "task": False}})])).encode(),
}


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _ours_or_orphaned(owner: int) -> bool:
    """Whether a kernel whose grading worker was ``owner`` belongs to this test or outlived its grader.

    Other pytest-xdist workers grade at the same time: their kernels carry the marker too, but
    their grading workers are alive and are not descendants of this process.
    """
    pid = owner
    while pid > 1:
        if pid == os.getpid():
            return True
        pid = _parent(pid)
    return not Path(f"/proc/{owner}").exists()


def leftover_processes() -> list[str]:
    """Command lines of processes a submission left: the marker, or one of this run's grading kernels' environment."""
    found = []
    needle = re.compile(rb"(?:^|\0)" + RUN_MARKER.encode() + rb"=(\d+)-")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        owner = needle.search(environ)
        if MARKER in cmdline or (owner and _ours_or_orphaned(int(owner.group(1)))):
            found.append(f"{proc.name}: {cmdline}")
    return found


def hidden_lines() -> set[str]:
    shown = "\n".join(cell.source for cell in nbformat.read(RELEASE, as_version=4).cells)  # shown, even in part
    lines: set[str] = set()
    for cell in nbformat.read(SOLUTION, as_version=4).cells:
        if nbgrader_meta(cell).get("grade"):
            lines |= {line.strip() for line in split_hidden(cell.source)[1]}
    return {line for line in lines if len(line) >= 6 and line not in shown}


class Run:
    results: dict[str, GradeResult]
    seconds: float
    connections: list[str]
    folder: Path
    feedback: Path
    cache: Path
    gradebook_before: str | None


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = Run()
    out.folder = tmp_path_factory.mktemp("hostile")
    out.feedback = out.folder.parent / "hostile-feedback"
    out.cache = out.folder.parent / "hostile-cache.jsonl"
    out.gradebook_before = _digest(REPO_ROOT / "gradebook.db")
    out.connections = []
    for name, nb in HOSTILE.items():
        nbformat.write(nb, out.folder / f"{name}.ipynb")
    for name, content in BROKEN.items():
        (out.folder / name).write_bytes(content)
    assert not leftover_processes(), "processes of an earlier run are still there"

    LISTENER.listen(8)
    LISTENER.settimeout(0.5)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                connection, address = LISTENER.accept()
                out.connections.append(str(address))
                connection.close()
            except OSError:
                continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    started = time.perf_counter()
    results = grade(ASSIGNMENT, [out.folder], feedback_dir=out.feedback, progress=False, jobs=2,
                    cell_timeout=CELL_TIMEOUT, notebook_timeout=NOTEBOOK_TIMEOUT, cache=out.cache)
    out.seconds = time.perf_counter() - started
    stop.set()
    listener.join()
    LISTENER.close()
    out.results = {Path(result.submission).stem: result for result in results}
    print(f"\nhostile set: {len(results)} submissions graded in {out.seconds:.0f} s with 2 jobs; "
          + ", ".join(f"{name} {r.seconds:.0f} s" for name, r in sorted(out.results.items())))
    return out


def failed(result: GradeResult) -> set[str]:
    return {test.name for test in result.tests if not test.passed}


def full_marks(result: GradeResult) -> None:
    assert result.error is None, result.error
    assert failed(result) == set() and result.score == MAX_SCORE, [t for t in result.tests if not t.passed]


def part1_only(result: GradeResult, error: str) -> None:
    """The kernel was stopped in the causal-mask answer: part 1's 5 points kept, the rest failed."""
    assert result.error and error in result.error, result.error
    assert [t.name for t in result.tests] == TESTS
    assert failed(result) == set(TESTS) - PART1 and result.score == 5 and result.max_score == MAX_SCORE


# --- rows, marks and errors -------------------------------------------------------------------

def test_every_submission_has_a_row(run: Run) -> None:
    assert set(run.results) == set(HOSTILE) | {Path(name).stem for name in BROKEN}
    assert all(r.max_score == MAX_SCORE for r in run.results.values())


def test_endless_loop_that_ignores_interrupts_is_stopped(run: Run) -> None:
    result = run.results["endless_loop_ignoring_interrupts"]
    part1_only(result, "stopped responding")
    assert result.seconds < CELL_TIMEOUT + 120  # generous: a busy machine must not fail it; a hang would


def test_notebook_time_limit(run: Run) -> None:
    result = run.results["slow_notebook"]
    part1_only(result, f"limit of {NOTEBOOK_TIMEOUT} s")
    assert NOTEBOOK_TIMEOUT - 5 < result.seconds < NOTEBOOK_TIMEOUT + 120  # it waited for the limit, then stopped


@needs_cgroups
def test_memory_hog_is_killed_by_the_memory_cgroup(run: Run) -> None:
    part1_only(run.results["memory_hog"], "more than 2 GiB of memory")


def test_huge_allocation_fails_inside_the_kernel(run: Run) -> None:
    full_marks(run.results["huge_allocation"])  # MemoryError from the address-space limit


@needs_bwrap
def test_killing_parent_and_process_group_only_ends_its_own_kernel(run: Run) -> None:
    # In the pid namespace its parent is the namespace's init, which ignores the signal; the
    # process group is the kernel's own session. The grader and the other submissions carry on.
    part1_only(run.results["kills_its_parent_and_group"], "the kernel died")


@needs_cgroups
def test_fork_bomb_is_capped_by_the_pids_cgroup(run: Run) -> None:
    full_marks(run.results["fork_bomb"])


def test_daemon_is_ended_with_its_submission(run: Run) -> None:
    full_marks(run.results["daemon_left_running"])


def test_huge_files_hit_the_file_size_and_tmp_limits(run: Run) -> None:
    full_marks(run.results["huge_files"])


@needs_bwrap
def test_solutions_gradebook_and_other_submissions_are_out_of_reach(run: Run) -> None:
    full_marks(run.results["reads_and_writes_secrets"])
    assert not (REPO_ROOT / "src" / "llmcourse" / "pwned.py").exists()


@needs_bwrap
def test_no_network(run: Run) -> None:
    full_marks(run.results["network"])
    assert run.connections == []


def test_enormous_output_is_truncated(run: Run) -> None:
    # Prints, a display updated twenty times with 2 MB each, an Output widget's print: one cap for all.
    result = run.results["enormous_output"]
    full_marks(result)
    assert any("output truncated" in warning for warning in result.warnings), result.warnings
    page = run.feedback / "enormous_output.html"
    assert page.stat().st_size < 100_000 and "z" * 30_000 not in page.read_text() and "w" * 30_000 not in page.read_text()
    assert max(len(line) for line in run.cache.read_text().splitlines()) < 100_000


def test_tampering_with_execution_is_detected(run: Run) -> None:
    part1_only(run.results["tampers_with_execution"], "changed how the kernel runs code")


@pytest.mark.parametrize("name, phrase", [("garbage", "not UTF-8"), ("half", "invalid JSON"),
                                          ("wrong_assignment", "wrong assignment")])
def test_broken_files(run: Run, name: str, phrase: str) -> None:
    result = run.results[name]
    assert result.error and phrase in result.error and result.score == 0 and result.tests == []


# --- nothing leaks, nothing survives, nothing is lost -----------------------------------------

def test_feedback_pages_leak_no_hidden_test_and_load_nothing_remote(run: Run) -> None:
    secret = hidden_lines()
    assert len(secret) > 20
    pages = sorted(run.feedback.glob("*.html"))
    assert len(pages) == len(HOSTILE)
    for page in pages:
        text = page.read_text()
        assert not [line for line in secret if line in text], page.name
        assert "BEGIN HIDDEN" not in text and "<script" not in text.lower()
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I), page.name
        assert "@import" not in text and "url(" not in text
    leak = (run.feedback / "leaks_hidden_tests.html").read_text()
    assert "[hidden test]" in leak  # its error message carried the test cell's source: redacted
    assert run.results["leaks_hidden_tests"].score == 10


def test_no_process_is_left_running(run: Run) -> None:
    deadline = time.monotonic() + 10
    while leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftover_processes() == []


def test_results_are_intact_and_a_rerun_reuses_them(run: Run) -> None:
    lines = run.cache.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is whole JSON
    assert len(records) == len(run.results)
    assert _digest(REPO_ROOT / "gradebook.db") == run.gradebook_before
    started = time.perf_counter()
    again = grade(ASSIGNMENT, [run.folder], feedback_dir=run.feedback, progress=False, jobs=2,
                  cell_timeout=CELL_TIMEOUT, notebook_timeout=NOTEBOOK_TIMEOUT, cache=run.cache)
    assert time.perf_counter() - started < run.seconds / 4  # read back, not graded again
    assert all(r.cached for r in again)
    assert {Path(r.submission).stem: (r.score, r.error) for r in again} == {
        name: (r.score, r.error) for name, r in run.results.items()}


def test_hostile_set_runs_in_reasonable_time(run: Run) -> None:
    assert run.seconds < 600  # generous: a hung kernel or a limit not enforced would pass it


def test_unsandboxed_fallback_warns_and_still_grades(tmp_path: Path) -> None:
    # Without bubblewrap: a clear warning, limits and cgroups still on, the daemon still ended.
    nbformat.write(HOSTILE["daemon_left_running"], tmp_path / "daemon.ipynb")
    nbformat.write(HOSTILE["huge_files"], tmp_path / "files.ipynb")
    env = {**os.environ, "LLMCOURSE_SANDBOX": "off"}
    done = subprocess.run([sys.executable, "-m", "llmcourse.cli", "grade", ASSIGNMENT, str(tmp_path), "--json",
                           "--no-cache", "--jobs", "2"], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "UNSANDBOXED" in done.stderr and "LLMCOURSE_SANDBOX=off" in done.stderr
    rows = {Path(row["submission"]).stem: row for row in json.loads(done.stdout)}
    assert rows["files"]["score"] == MAX_SCORE and rows["files"]["error"] is None
    assert rows["daemon"]["score"] == MAX_SCORE and rows["daemon"]["error"] is None
    if SUPPORT.cgroups:  # the daemon cleared its environment: only its cgroup finds it
        assert leftover_processes() == []


def test_model_cache_is_mounted_without_grades_or_submissions(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcourse.grading.sandbox import MODEL_CACHE_IN_SANDBOX, bwrap_args

    for name in ("gpt_tiny", "grading", "nbgrader-exchange"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path))
    args = bwrap_args(tmp_path / "work", tmp_path / "run", Limits())
    mounts = {args[i + 1]: args[i + 2] for i, arg in enumerate(args) if arg in {"--ro-bind", "--bind"}}
    assert mounts[str(tmp_path / "gpt_tiny")] == f"{MODEL_CACHE_IN_SANDBOX}/gpt_tiny"
    assert str(tmp_path / "grading") not in mounts and str(tmp_path / "nbgrader-exchange") not in mounts
    assert not any(str(SOLUTIONS_DIR) == source or str(REPO_ROOT) == source for source in mounts)
    assert mounts[str(tmp_path / "work")] == str(tmp_path / "work")  # the only writable folders
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--bind"] == [str(tmp_path / "run"),
                                                                               str(tmp_path / "work")]
