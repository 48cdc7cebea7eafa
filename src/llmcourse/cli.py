"""The ``llmcourse`` command: grade, release and validate exercises, refresh outputs, start JupyterLab.

    llmcourse grade ASSIGNMENT PATH... [--json] [--feedback DIR] [--jobs N] [--csv FILE]
                    [--timeout SECONDS] [--notebook-timeout SECONDS] [--force] [--cache FILE | --no-cache]
    llmcourse release ASSIGNMENT...
    llmcourse validate NOTEBOOK
    llmcourse outputs [--jobs N] NOTEBOOK...
    llmcourse lab
    llmcourse chat [--system TEXT] [--max-new-tokens N] [--temperature T] [--max-context N]
    llmcourse class [--dir DIR] setup STUDENT... | start | release A [--due T] | grade A | grades | remove

Exit status: 0 when the command ran (whatever the scores), 1 when ``validate`` finds a failing
test or ``outputs`` a failing notebook, 2 on a usage error (unknown assignment, missing path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

USAGE_ERROR = 2


def _fail(message: str) -> int:
    print(f"llmcourse: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def default_cache(assignment: str) -> Path:
    """Where ``llmcourse grade`` keeps results for resuming: the user's cache folder."""
    from .grading.settings import grading_results_dir

    return grading_results_dir() / f"{assignment}.jsonl"


def cmd_grade(args: argparse.Namespace) -> int:
    """Auto-grade submissions and print a table, or JSON with --json."""
    import warnings

    from .grading import GradingError, SandboxWarning, grade, probe, write_csv
    from .grading.autograde import test_names

    warning = probe().warning()
    # One line on what protects this machine from the submissions: the sandbox, the rlimits, the cgroups.
    print(f"WARNING: {warning}" if warning else f"llmcourse grade: {probe().describe()}", file=sys.stderr)
    cache = None if args.no_cache else (args.cache or default_cache(args.assignment))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SandboxWarning)  # printed above, once
            results = grade(args.assignment, [Path(p) for p in args.paths], feedback_dir=args.feedback,
                            solutions_dir=args.solutions, progress=not args.json, jobs=args.jobs,
                            cell_timeout=args.timeout, notebook_timeout=args.notebook_timeout,
                            cache=cache, force=args.force, keep_graded=args.keep_graded)
    except (GradingError, FileNotFoundError, ValueError) as error:
        return _fail(str(error))
    if args.csv:
        write_csv(results, args.csv, test_names(args.assignment, args.solutions))
    if args.json:
        print(json.dumps([result.to_json() for result in results], indent=2))
        return 0
    rows = [["submission", "score", "max_score", "error"]]
    rows += [[r.submission, f"{r.score:g}", f"{r.max_score:g}", (r.error or "")[:300]] for r in results]
    print(_table(rows))
    for result in results:
        for line in result.warnings:
            print(f"warning: {result.submission}: {line}")
    fresh = [r for r in results if not r.cached and r.tests]
    reused = sum(r.cached for r in results)
    errors = sum(bool(r.error) for r in results)
    summary = f"\n{len(results)} submissions: {len(fresh)} graded now, {reused} unchanged since the last run (not re-graded)"
    summary += f", {errors} with errors"
    warned = sum(bool(r.warnings) for r in results)
    if warned:
        summary += f", {warned} with cells stopped at a limit (see the warnings above)"
    if fresh:
        summary += f"; {sum(r.seconds for r in fresh) / len(fresh):.1f} s per graded submission"
    print(summary)
    if args.csv:
        print(f"grades: {args.csv}")
    pages = [page for r in results for page in r.feedback]
    if pages:
        print(f"feedback: {len(pages)} HTML page(s) in {args.feedback} (hidden tests shown by name and result only)")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    """Regenerate exercises/<assignment>/ from solutions/<assignment>/."""
    from .grading import GradingError, check_unique_answer_ids, release_assignment

    try:
        check_unique_answer_ids(args.solutions)
        for assignment in args.assignments:
            for path in release_assignment(assignment, args.exercises, args.solutions):
                print(f"wrote {path}")
    except GradingError as error:
        return _fail(str(error))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Run a notebook's tests; exit 1 if any fails."""
    from .grading import SubmissionError
    from .grading.execution import validate_notebook

    path = Path(args.notebook)
    if not path.is_file():
        return _fail(f"no such notebook: {path}")
    try:
        report = validate_notebook(path)
    except SubmissionError as error:
        print(f"{path}: {error}")
        return 1
    print(report.summary())
    return 0 if report.passed else 1


def cmd_outputs(args: argparse.Namespace) -> int:
    """Re-execute notebooks in place and save their outputs, ``--jobs`` at a time, as ``make test`` runs them.

    The course models the notebooks load are trained first, with every core (as the test suite's
    warm-up does); then each notebook runs in its own process with its share of the cores
    (``OMP_NUM_THREADS``), so the saved outputs are those the tests will compare with.
    """
    from concurrent.futures import ThreadPoolExecutor

    from . import models
    from .grading.sandbox import cpu_threads

    paths = [Path(p) for p in args.notebooks]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return _fail(f"no such notebook: {', '.join(missing)}")
    jobs = max(1, min(args.jobs, len(paths)))
    if jobs == 1:
        failed = [path for path in tqdm(paths, desc="executing", unit="notebook", disable=len(paths) < 2)
                  if not _execute_one(path)]
    else:
        for name in models.models_used_by(paths):
            models.prepare_model(name, progress=True)
        share = str(max(1, cpu_threads() // jobs))
        env = {**os.environ, "OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}

        def run(path: Path) -> bool:
            done = subprocess.run([sys.executable, "-m", "llmcourse.cli", "outputs", "--jobs", "1", str(path)],
                                  env=env, capture_output=True, text=True)
            if done.returncode != 0:
                tqdm.write((done.stdout + done.stderr).strip()[-3000:])
            return done.returncode == 0

        with ThreadPoolExecutor(jobs) as pool, tqdm(total=len(paths), desc="executing", unit="notebook") as bar:
            failed = []
            for path, ok in zip(paths, pool.map(run, paths)):
                bar.update()
                if not ok:
                    failed.append(path)
    if failed:
        print(f"{len(failed)} of {len(paths)} notebooks failed: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


def _execute_one(path: Path) -> bool:
    """Execute one notebook in place; say why and return False when it fails (its file is left as it was)."""
    from .grading.execution import CellExecutionError, execute_in_place

    try:
        execute_in_place(path)
    except CellExecutionError as error:
        tqdm.write(f"{path}: a cell failed, outputs not saved:\n{str(error).strip()[-2000:]}")
        return False
    except Exception as error:  # a dead kernel or a timeout: report and go on with the others
        tqdm.write(f"{path}: {type(error).__name__}: {error}; outputs not saved")
        return False
    return True


def cmd_lab(args: argparse.Namespace) -> int:
    """Start JupyterLab on the repository, offline, with nbgrader's extensions (replaces this process)."""
    from .cache import cache_dir
    from .classroom.hub import write_page_config
    from .grading import REPO_ROOT

    # JupyterLab asks on first start whether to fetch Jupyter's news; --LabApp.news_url=None does not stop
    # the question, turning the announcements plugin off does (a settings folder put first on the path).
    settings = cache_dir() / "jupyter-lab-settings"
    write_page_config(settings)
    os.environ["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
        [str(settings), *filter(None, [os.environ.get("JUPYTER_CONFIG_PATH")])])
    command = [
        sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", "--no-browser",
        f"--ServerApp.root_dir={REPO_ROOT}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # the default one queries PyPI
        "--LabApp.default_url=/lab/tree/exercises",  # learners start on the exercises
        "--ServerApp.open_browser=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    command += args.extra
    # From the repository, so that nbgrader's extensions read nbgrader_config.py.
    os.chdir(REPO_ROOT)
    os.execv(sys.executable, command)
    return 0  # not reached


def cmd_chat(args: argparse.Namespace) -> int:
    """Talk with SmolLM2-135M-Instruct on the terminal: one line a message, /reset to start over, /quit or EOF to end."""
    from .dialogue import Chat
    from .post_training import smollm2_decoder

    interactive = sys.stdin.isatty()
    decoder, tokenizer = smollm2_decoder(progress=interactive)
    chat = Chat(decoder, tokenizer, system=args.system, max_context=args.max_context,
                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=0.9 if args.temperature else None)
    if interactive:
        print("SmolLM2-135M-Instruct, on this machine. Type a message; /reset starts over, /quit ends.")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            chat.reset()
            print("(a new conversation)")
            continue
        dropped = chat.dropped
        try:
            chat.send(text, on_text=lambda piece: print(piece, end="", flush=True))
        except ValueError as error:
            print(f"llmcourse chat: {error}", file=sys.stderr)
            continue
        print()
        if chat.dropped > dropped:
            print(f"(the oldest {chat.dropped - dropped} turns were dropped to fit {args.max_context} tokens)")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``llmcourse`` command."""
    from .grading.executor import NOTEBOOK_TIMEOUT_S
    from .grading.settings import CELL_TIMEOUT_S, EXERCISES_DIR, SOLUTIONS_DIR

    parser = argparse.ArgumentParser(prog="llmcourse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    grade = commands.add_parser("grade", help="auto-grade notebooks, or folders of them, with nbgrader")
    grade.add_argument("assignment", help="assignment name, a folder of solutions/ (e.g. ex02_attention)")
    grade.add_argument("paths", nargs="+", metavar="PATH",
                       help="a notebook, a folder of notebooks, or nbgrader's submitted/ folder")
    grade.add_argument("--json", action="store_true", help="print JSON: submission, score, max_score, error, tests")
    grade.add_argument("--feedback", type=Path, metavar="DIR", help="write one HTML feedback page per submission")
    grade.add_argument("--jobs", "-j", type=_positive, default=1, metavar="N",
                       help="grade N submissions at a time, each process in its own course (default 1)")
    grade.add_argument("--timeout", type=_positive, default=None, metavar="SECONDS",
                       help="interrupt a cell after this long; it then fails (default: what the assignment "
                            f"asks for in its notebook metadata, else {CELL_TIMEOUT_S})")
    grade.add_argument("--notebook-timeout", type=_positive, default=None, metavar="SECONDS",
                       help="stop a notebook after this long; its remaining cells fail (default: what the "
                            f"assignment asks for, else {NOTEBOOK_TIMEOUT_S})")
    grade.add_argument("--csv", type=Path, metavar="FILE",
                       help="write the grades as CSV: student, submission, score, max_score, one column per test, error")
    grade.add_argument("--cache", type=Path, metavar="FILE",
                       help="results of earlier runs, to skip unchanged submissions "
                            "(default ~/.cache/llmcourse/grading/ASSIGNMENT.jsonl)")
    grade.add_argument("--no-cache", action="store_true", help="grade everything, and remember nothing")
    grade.add_argument("--keep-graded", type=Path, metavar="DIR",
                       help="keep each submission's graded notebooks in DIR/STUDENT/ASSIGNMENT/ (nbgrader's "
                            "autograded/ layout, which the formgrader lists)")
    grade.add_argument("--force", action="store_true", help="grade again even submissions unchanged since the last run")
    grade.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR, help=argparse.SUPPRESS)
    grade.set_defaults(run=cmd_grade)

    release = commands.add_parser("release", help="regenerate exercises/<assignment>/ from solutions/")
    release.add_argument("assignments", nargs="+", metavar="ASSIGNMENT")
    release.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR, help=argparse.SUPPRESS)
    release.add_argument("--exercises", type=Path, default=EXERCISES_DIR, help=argparse.SUPPRESS)
    release.set_defaults(run=cmd_release)

    validate = commands.add_parser("validate", help="run a notebook's tests; exit 1 if one fails")
    validate.add_argument("notebook")
    validate.set_defaults(run=cmd_validate)

    outputs = commands.add_parser("outputs", help="re-execute notebooks in place and save their outputs")
    outputs.add_argument("notebooks", nargs="+", metavar="NOTEBOOK")
    outputs.add_argument("--jobs", type=int, default=2, metavar="N",
                         help="notebooks executed at once, each with its share of the cores, as `make test` "
                              "runs them (default 2)")
    outputs.set_defaults(run=cmd_outputs)

    lab = commands.add_parser("lab", help="start JupyterLab on the repository (offline, with nbgrader)",
                              description="Other options (e.g. --port=8890) are passed on to JupyterLab.")
    lab.set_defaults(run=cmd_lab)

    from .chat import SMOLLM2_SYSTEM_PROMPT

    chat = commands.add_parser("chat", help="talk with SmolLM2-135M-Instruct on the terminal (offline)")
    chat.add_argument("--system", default=SMOLLM2_SYSTEM_PROMPT, help="the system turn (default: SmolLM2's own)")
    chat.add_argument("--max-new-tokens", type=_positive, default=256, metavar="N", help="longest reply (default 256)")
    chat.add_argument("--max-context", type=_positive, default=2048, metavar="N",
                      help="tokens of conversation kept; older turns are dropped (default 2048)")
    chat.add_argument("--temperature", type=float, default=0.0, metavar="T",
                      help="0 answers greedily (default); above 0 samples, with top-p 0.9")
    chat.set_defaults(run=cmd_chat)

    from .classroom.commands import register as register_class

    register_class(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``llmcourse`` command line and return its exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "lab":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
