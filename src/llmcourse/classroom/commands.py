"""``llmcourse class ...``: set up, run and grade a class on one machine (see the instructor guide)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def _room(args: argparse.Namespace) -> Any:
    from .hub import Classroom, default_classroom

    return Classroom(args.dir.resolve()) if args.dir else default_classroom()


def _fail(message: str) -> int:
    print(f"llmcourse class: {message}", file=sys.stderr)
    return 2


def cmd_setup(args: argparse.Namespace) -> int:
    from . import hub

    room = _room(args)
    try:
        made = hub.setup(room, args.students, args.instructor)
    except (RuntimeError, ValueError) as error:
        return _fail(str(error))
    roster = room.roster()
    print(f"class in {room.root}: instructor {roster.instructor}, {len(roster.students)} students "
          f"({', '.join(roster.students)})")
    shared = sorted(p.name for p in room.models.iterdir() if not p.name.startswith("."))
    print(f"models the exercises load, shared read-only in {room.models}: {', '.join(shared) or '(none)'}")
    if made:
        print(f"new passwords for {', '.join(made)} are in {room.passwords_file} (readable by root only): hand "
              "each person theirs")
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def cmd_start(args: argparse.Namespace) -> int:
    from . import hub

    room = _room(args)
    try:
        process = hub.start(room, args.port)
    except (RuntimeError, FileNotFoundError) as error:
        return _fail(str(error))
    print(f"JupyterHub for the class at http://127.0.0.1:{args.port}/ (log: {room.hub_dir / 'jupyterhub.log'}); "
          "Ctrl-C stops it and every server it started")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the class as Ctrl-C does
    try:
        while process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop(process)
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from . import instructor

    due = None
    if args.due:
        due = datetime.fromisoformat(args.due)
        due = (due if due.tzinfo else due.astimezone()).astimezone(timezone.utc).replace(tzinfo=None)
    try:
        instructor.release(_room(args), args.assignment, due)
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        return _fail(str(error))
    print(f"released {args.assignment}" + (f", due {due:%Y-%m-%d %H:%M} UTC" if due else ""))
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from ..grading import probe
    from . import instructor

    print(f"llmcourse class grade: {probe().describe()}", file=sys.stderr)
    room = _room(args)
    started = time.perf_counter()
    try:
        results = instructor.grade(room, args.assignment, jobs=args.jobs)
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        return _fail(str(error))
    seconds = time.perf_counter() - started
    if not results:
        print(f"no submissions of {args.assignment} to collect")
    for result in results:
        print(f"{result.student_id}: {result.score:g} / {result.max_score:g}" + (f"  ({result.error})" if result.error else ""))
    graded = [result for result in results if not result.cached]
    # what sizes a class's run: the time per submission at this many jobs
    each = f" ({seconds / len(graded):.1f} s per submission, collecting and releasing included)" if graded else ""
    print(f"{len(graded)} graded in {seconds:.0f} s with {args.jobs} jobs{each}; "
          f"{len(results) - len(graded)} unchanged since the last run, reused")
    missing = sorted(set(room.roster().students) - {result.student_id for result in results})
    if missing:
        print(f"no submission from {len(missing)}: {', '.join(missing)}")
    print("scores are in the gradebook (the formgrader shows them) and the feedback is released")
    return 0


def cmd_grades(args: argparse.Namespace) -> int:
    from . import instructor

    try:
        room = _room(args)
        out = args.out or room.root / "grades.csv"
        rows = instructor.grades_csv(room, out)
    except (RuntimeError, FileNotFoundError) as error:
        return _fail(str(error))
    print(f"{rows} rows (student x assignment) written to {out}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    import shutil

    from . import accounts, hub

    room = _room(args)
    try:
        roster = room.roster()
    except FileNotFoundError as error:
        return _fail(str(error))
    removed = [name for name in roster.people if accounts.remove_account(name)]
    shutil.rmtree(room.root)
    print(f"removed the accounts {', '.join(removed) or '(none)'} and {room.root}")
    print(f"{hub.REPO_ROOT / 'solutions'} stays closed to other accounts (mode 700, set by setup); "
          f"`chmod 755 {hub.REPO_ROOT / 'solutions'}` opens it again")
    return 0


def register(commands: Any) -> None:
    """Add ``class`` and its subcommands to the ``llmcourse`` command line."""
    from .hub import DEFAULT_PORT

    parser = commands.add_parser("class", help="a class on this machine: JupyterHub, nbgrader's exchange, "
                                              "the sandboxed grader (as root)")
    parser.add_argument("--dir", type=Path, help="the class's folder (default _class/ in the repository, or "
                                                 "$LLMCOURSE_CLASS_DIR)")
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    setup = steps.add_parser("setup", help="make accounts and folders for the instructor and students "
                                           "(again with more names to add students)")
    setup.add_argument("students", nargs="+", metavar="STUDENT")
    setup.add_argument("--instructor", default="instructor", help="the instructor's account (default instructor)")
    setup.set_defaults(run=cmd_setup)
    start = steps.add_parser("start", help="run JupyterHub for the class on 127.0.0.1 until Ctrl-C")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    start.set_defaults(run=cmd_start)
    release = steps.add_parser("release", help="release an assignment to the students")
    release.add_argument("assignment")
    release.add_argument("--due", help="due date and time, e.g. 2027-01-15T23:59 (local time unless it has a zone)")
    release.set_defaults(run=cmd_release)
    grade = steps.add_parser("grade", help="collect the latest submissions, grade them in the sandbox, "
                                           "fill the gradebook and release the feedback")
    grade.add_argument("assignment")
    grade.add_argument("--jobs", "-j", type=int, default=2, help="submissions graded at once (default 2)")
    grade.set_defaults(run=cmd_grade)
    grades = steps.add_parser("grades", help="write every grade as CSV: student, assignment, score, status, parts")
    grades.add_argument("--out", type=Path, default=None, help="default grades.csv in the class's folder")
    grades.set_defaults(run=cmd_grades)
    remove = steps.add_parser("remove", help="remove the class's accounts (only those it made) and its folder")
    remove.set_defaults(run=cmd_remove)
