"""Pieces of llmcourse.classroom that need no accounts, hub or browser (test_class runs the whole cycle)."""

from __future__ import annotations

from pathlib import Path

from llmcourse.classroom import instructor
from llmcourse.grading import GradeResult


def submitted(course: Path, student: str, assignment: str, notebooks: list[str]) -> Path:
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True)
    for name in notebooks:
        (folder / f"{name}.ipynb").write_text("{}")
    (folder / "timestamp.txt").write_text("2026-12-07 08:00:00.000000 UTC")
    (folder / "submission_secret.txt").write_text(f"secret of {student}")
    (course / "autograded" / student / assignment).mkdir(parents=True)
    return folder


def test_feedback_goes_under_each_submitted_notebooks_name(tmp_path: Path) -> None:
    course = tmp_path / "course"
    page = tmp_path / "pages" / "ana.html"
    page.parent.mkdir()
    page.write_text("<html>ana: 7 of 9</html>")
    submitted(course, "ana", "two_parts", ["part1", "part2"])
    placed = instructor.place_feedback(course, "two_parts", GradeResult("ana", 7, 9, feedback=[page], student_id="ana"))
    folder = course / "feedback" / "ana" / "two_parts"
    # nbgrader's fetch_feedback looks for one page per submitted notebook, keyed on its name and the secret
    assert placed == [folder / "part1.html", folder / "part2.html"]
    assert {p.read_text() for p in placed} == {"<html>ana: 7 of 9</html>"}
    assert (folder / "submission_secret.txt").read_text() == "secret of ana"
    assert (folder / "timestamp.txt").read_text() == (course / "autograded" / "ana" / "two_parts" / "timestamp.txt").read_text()


def test_no_feedback_page_places_nothing(tmp_path: Path) -> None:
    course = tmp_path / "course"
    submitted(course, "ben", "one_part", ["one_part"])
    assert instructor.place_feedback(course, "one_part", GradeResult("ben", 0, 9, error="broken", student_id="ben")) == []
    assert not (course / "feedback").exists()


def test_shards_graded_on_other_machines_are_reused_by_the_class_grade(tmp_path: Path) -> None:
    """The large-class recipe of the instructor guide: shards graded apart (here two `llmcourse grade` runs),
    their result files merged, then one grading of the whole class that reuses every result and runs nothing."""
    import shutil
    import subprocess
    import sys

    from llmcourse.grading import SOLUTIONS_DIR, grade

    assignment = "ex01_language_models"
    course = tmp_path / "course"
    for student in ("ana", "ben"):
        folder = course / "submitted" / student / assignment
        folder.mkdir(parents=True)
        shutil.copy(SOLUTIONS_DIR / assignment / f"{assignment}.ipynb", folder)
    pages, graded = course / "feedback-pages", course / "autograded"
    for k, student in enumerate(("ana", "ben")):
        done = subprocess.run([sys.executable, "-m", "llmcourse.cli", "grade", assignment,
                               str(course / "submitted" / student), "--json", "--cache", str(tmp_path / f"shard-{k}.jsonl"),
                               "--keep-graded", str(graded), "--feedback", str(pages)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in graded.iterdir()) == ["ana", "ben"]
    merged = course / "grading" / f"{assignment}.jsonl"
    merged.parent.mkdir()
    merged.write_text("".join((tmp_path / f"shard-{k}.jsonl").read_text() for k in range(2)))
    results = grade(assignment, [course / "submitted"], feedback_dir=pages, cache=merged, keep_graded=graded,
                    progress=False)
    assert [(r.student_id, r.cached, r.score == r.max_score > 0) for r in results] == [("ana", True, True),
                                                                                         ("ben", True, True)]
