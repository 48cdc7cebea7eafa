"""The instructor's side of a class: release, collect, grade in the sandbox, feedback, grades out.

nbgrader's own commands do what concerns the exchange, run as the instructor's account so that
every file keeps nbgrader's owners and modes: ``generate_assignment`` and ``release_assignment``,
``collect``, ``release_feedback``. Grading is the course's: ``llmcourse.grading.grade`` runs every
collected submission in its sandbox (nbgrader's ``autograde`` would run them unsandboxed, with the
instructor's rights), and its scores are written into nbgrader's gradebook, cell by cell, so that
the formgrader shows them; its feedback pages (hidden tests never shown) go where
``release_feedback`` looks for them.
"""

from __future__ import annotations

import csv
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from ..grading.results import GradeResult
from . import accounts
from .hub import COURSE_ID, Classroom, server_environment


def nbgrader(classroom: Classroom, *args: str) -> str:
    """Run ``nbgrader ARGS`` as the instructor in the course folder; return its output, raise with it on failure."""
    instructor = classroom.roster().instructor
    home = pwd.getpwnam(instructor).pw_dir
    env = {**server_environment(classroom), "HOME": home, "USER": instructor,  # as the instructor's server
           "JUPYTER_CONFIG_PATH": str(classroom.jupyter_dir("instructor"))}
    done = subprocess.run([*accounts.as_user(instructor), str(classroom.python), "-m", "nbgrader", *args],
                          cwd=classroom.course, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def release(classroom: Classroom, assignment: str, due: datetime | None = None) -> None:
    """Put ``assignment`` in the gradebook (with its due date, UTC) and release it to the exchange."""
    source = classroom.course / "solutions" / assignment
    if not any(source.glob("*.ipynb")):
        raise ValueError(f"no assignment {assignment!r} in {classroom.course / 'solutions'}")
    nbgrader(classroom, "generate_assignment", assignment, "--force")
    if due is not None:
        nbgrader(classroom, "db", "assignment", "add", assignment, f"--duedate={due.isoformat()} UTC")
    nbgrader(classroom, "release_assignment", assignment, "--force")


def _timestamp(folder: Path) -> datetime | None:
    from nbgrader.utils import parse_utc

    stamp = folder / "timestamp.txt"
    return parse_utc(stamp.read_text().strip()) if stamp.is_file() else None


def record(classroom: Classroom, assignment: str, results: Sequence[GradeResult]) -> None:
    """Write each result into nbgrader's gradebook: one submission per student, each graded cell's score."""
    from nbgrader.api import Gradebook

    import warnings

    from sqlalchemy.exc import SAWarning

    submitted = classroom.course / "submitted"
    with warnings.catch_warnings(), Gradebook(f"sqlite:///{classroom.course / 'gradebook.db'}") as book:
        warnings.simplefilter("ignore", SAWarning)  # nbgrader's own session handling, as in grading.grader
        for student in classroom.roster().students:  # every student, so the formgrader lists who did not submit
            known = book.update_or_create_student(student)
            if known.last_name is None and known.first_name is None:  # the formgrader would show "None, None"
                known.last_name, known.first_name = student, ""
        book.db.commit()
        for result in results:
            student = result.student_id
            book.update_or_create_student(student)
            stamp = _timestamp(submitted / student / assignment)
            submission = book.update_or_create_submission(assignment, student, **({"timestamp": stamp} if stamp else {}))
            grades = {grade.name: grade for notebook in submission.notebooks for grade in notebook.grades}
            for test in result.tests:
                if test.name in grades:  # as nbgrader's autograde: scored, so no manual grading unless overridden
                    grades[test.name].auto_score = test.score
                    grades[test.name].needs_manual_grade = grades[test.name].manual_score is not None
            book.db.commit()


def grade(classroom: Classroom, assignment: str, jobs: int = 2, progress: bool = True) -> list[GradeResult]:
    """Collect the latest submission of each student, grade them in the sandbox, record, release feedback."""
    from ..grading.autograde import grade as sandboxed_grade

    nbgrader(classroom, "collect", assignment, "--update")
    course = classroom.course
    if not any(course.glob(f"submitted/*/{assignment}/*.ipynb")):
        return []
    pages = course / "feedback-pages" / assignment
    results = sandboxed_grade(assignment, [course / "submitted"], feedback_dir=pages, solutions_dir=course / "solutions",
                              progress=progress, jobs=jobs, cache=course / "grading" / f"{assignment}.jsonl",
                              keep_graded=course / "autograded")  # the formgrader lists what is there
    record(classroom, assignment, results)
    for result in results:
        place_feedback(course, assignment, result)
    accounts.give(course, classroom.roster().instructor, 0o700)
    nbgrader(classroom, "release_feedback", assignment)
    return results


def place_feedback(course: Path, assignment: str, result: GradeResult) -> list[Path]:
    """Put a graded submission's feedback where ``nbgrader release_feedback`` looks for it; return the pages.

    nbgrader wants ``feedback/<student>/<assignment>/<notebook>.html`` for each submitted notebook, beside
    the submission's ``timestamp.txt`` and ``submission_secret.txt`` (a student's ``fetch_feedback`` finds
    a page by a hash of the secret and the notebook's name). The course's grader writes one page per
    submission covering every notebook of the assignment, so an assignment of several notebooks gets
    that page under each notebook's name. The graded notebooks get the timestamp too (the formgrader
    reads it there).
    """
    submitted = course / "submitted" / result.student_id / assignment
    graded = course / "autograded" / result.student_id / assignment
    if graded.is_dir() and (submitted / "timestamp.txt").is_file():
        shutil.copyfile(submitted / "timestamp.txt", graded / "timestamp.txt")
    notebooks = [path.stem for path in sorted(submitted.glob("*.ipynb")) if not path.name.startswith(".")]
    if not result.feedback or not notebooks:
        return []
    folder = course / "feedback" / result.student_id / assignment
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("timestamp.txt", "submission_secret.txt"):
        if (submitted / key).is_file():
            shutil.copyfile(submitted / key, folder / key)
    pages = []
    for name in notebooks:
        shutil.copyfile(result.feedback[0], folder / f"{name}.html")
        pages.append(folder / f"{name}.html")
    return pages


def grades_csv(classroom: Classroom, out: Path) -> int:
    """Write the class's grades, one row per student and assignment, one column per graded part; return the rows.

    A student who did not submit gets a row with an empty score and ``status`` "missing"; a late one
    has ``status`` "late" and the seconds late.
    """
    from nbgrader.api import Gradebook, MissingEntry

    roster = classroom.roster()
    rows = []
    parts: list[str] = []
    with Gradebook(f"sqlite:///{classroom.course / 'gradebook.db'}") as book:
        for assignment in book.assignments:
            cells = [cell.name for notebook in assignment.notebooks for cell in notebook.grade_cells]
            parts += [name for name in cells if name not in parts]
            for student in roster.students:
                row: dict[str, object] = {"student": student, "assignment": assignment.name,
                                          "max_score": assignment.max_score}
                try:
                    submission = book.find_submission(assignment.name, student)
                except MissingEntry:
                    rows.append({**row, "score": "", "status": "missing", "seconds_late": ""})
                    continue
                late = submission.total_seconds_late
                row.update(score=submission.score, status="late" if late > 0 else "on time", seconds_late=round(late))
                for notebook in submission.notebooks:
                    for part in notebook.grades:
                        row[part.name] = part.score
                rows.append(row)
    columns = ["student", "assignment", "score", "max_score", "status", "seconds_late", *parts]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.chmod(out, 0o600)
    return len(rows)


__all__ = ["COURSE_ID", "grade", "grades_csv", "nbgrader", "record", "release"]
