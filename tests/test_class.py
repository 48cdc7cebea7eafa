"""A class on one machine, end to end, in Chromium: JupyterHub, nbgrader's exchange, the sandboxed grader.

One instructor and four students, each a Unix account. The instructor releases ex02_attention (due
tomorrow) and ex01_language_models (due yesterday). In the browser each student logs in, opens the
assignment list, fetches, and submits: ana a correct notebook, ben a correct one and then a partly
wrong one (the latest counts), cai a hostile one that tampers with its kernel; ana also submits ex01,
late; dev never submits. The answers go in through the student's own server (Jupyter's contents API,
as the notebook editor saves them). The instructor collects and grades with the course's sandbox; the
scores land in nbgrader's gradebook, the formgrader lists them, the feedback is released, and each
student fetches theirs in the browser and sees only their own, without the hidden tests. Then the
grades go out as CSV. The cycle runs once (the ``cycle`` fixture); the tests check what it left.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nbformat
import pytest

from llmcourse import models
from llmcourse.classroom import accounts, hub, instructor
from llmcourse.grading import REPO_ROOT, SOLUTIONS_DIR, GradeResult
from llmcourse.grading.feedback import split_hidden
from llmcourse.grading.notebooks import nbgrader_meta

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pinned in requirements.txt)")
pytestmark = [
    pytest.mark.skipif(hub.why_no_class() is not None, reason=f"no class on this machine: {hub.why_no_class()}"),
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (`make test` installs it as root with apt)"),
]

TEACHER = "llmc-teacher"
ANA, BEN, CAI, DEV = "llmc-ana", "llmc-ben", "llmc-cai", "llmc-dev"
STUDENTS = [ANA, BEN, CAI, DEV]
EX02, EX01 = "ex02_attention", "ex01_language_models"
TAMPER = "get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"
BROKEN_MASK = "\ndef causal_mask(T):  # partly wrong: every position sees the future\n    return torch.ones(T, T, dtype=torch.bool)\n"


def free_ports(count: int = 3) -> int:
    """A port p with p .. p + count - 1 free on 127.0.0.1 (the hub's, its API's and the proxy's API)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + count > 65535:
            continue
        try:
            for offset in range(count):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
    raise RuntimeError("no three free ports in a row")


def answers(assignment: str) -> dict[str, str]:
    """The solution's answer cells by grade id, without nbgrader's solution markers."""
    nb = nbformat.read(SOLUTIONS_DIR / assignment / f"{assignment}.ipynb", as_version=4)
    return {nbgrader_meta(c)["grade_id"]: "\n".join(line for line in c.source.splitlines() if "### " not in line)
            for c in nb.cells if nbgrader_meta(c).get("solution")}


def hidden_lines(assignment: str) -> set[str]:
    shown = "\n".join(c.source for c in nbformat.read(REPO_ROOT / "exercises" / assignment / f"{assignment}.ipynb",
                                                      as_version=4).cells)
    lines: set[str] = set()
    for cell in nbformat.read(SOLUTIONS_DIR / assignment / f"{assignment}.ipynb", as_version=4).cells:
        if nbgrader_meta(cell).get("grade"):
            lines |= {line.strip() for line in split_hidden(cell.source)[1]}
    return {line for line in lines if len(line) >= 6 and line not in shown}


class Student:
    """One person in Chromium: logged in to the hub, with JupyterLab and nbgrader's assignment list open."""

    def __init__(self, browser: Any, base: str, name: str, password: str) -> None:
        self.name, self.base = name, base
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.remote: list[str] = []
        self.context.route("**/*", self._local_only)
        self.page = self.context.new_page()
        self.page.goto(f"{base}/hub/login")
        self.page.fill("#username_input", name)
        self.page.fill("#password_input", password)
        self.page.click("#login_submit")
        self.page.wait_for_selector(".lm-MenuBar-itemLabel >> text=Nbgrader", timeout=120_000)
        self.page.click(".lm-MenuBar-itemLabel >> text=Nbgrader")
        self.page.click(".lm-Menu-itemLabel >> text=Assignment List")
        self.page.wait_for_selector("#released_assignments_list", timeout=30_000)

    def _local_only(self, route: Any) -> None:
        if "//127.0.0.1:" in route.request.url or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.remote.append(route.request.url)
            route.abort()

    def row(self, section: str, assignment: str) -> Any:
        return self.page.locator(f"#{section}_assignments_list .list_item:has-text('{assignment}')").first

    def refresh(self) -> None:
        self.page.click("#refresh_assignments_list")
        self.page.wait_for_timeout(1500)

    def fetch(self, assignment: str) -> None:
        self.row("released", assignment).locator("button:has-text('Fetch')").click()
        self.row("fetched", assignment).wait_for(timeout=30_000)

    def submissions(self, assignment: str) -> int:
        return self.page.locator(f"#submitted_assignments_list .list_item:has-text('{assignment}')").count()

    def submit(self, assignment: str) -> None:
        before = self.submissions(assignment)
        self.row("fetched", assignment).locator("button:has-text('Submit')").click()
        self.page.wait_for_function(
            f"() => document.querySelectorAll(\"#submitted_assignments_list .list_item\").length > {before}",
            timeout=60_000)

    def api(self, path: str) -> str:
        return f"{self.base}/user/{self.name}/api/contents/{path}"

    def xsrf(self) -> str:
        return next(c["value"] for c in self.context.cookies() if c["name"] == "_xsrf")

    def answer(self, assignment: str, edits: dict[str, str]) -> None:
        """Save the fetched notebook with ``edits`` (grade id -> new source) through the student's own server."""
        path = f"{assignment}/{assignment}.ipynb"
        reply = self.page.request.get(self.api(path))
        assert reply.ok, reply.status
        nb = reply.json()["content"]
        for cell in nb["cells"]:
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if grade_id in edits:
                cell["source"] = edits[grade_id]
        saved = self.page.request.put(self.api(path), data=json.dumps({"type": "notebook", "format": "json",
                                                                        "content": nb}),
                                      headers={"X-XSRFToken": self.xsrf(), "Content-Type": "application/json"})
        assert saved.ok, (saved.status, saved.text()[:300])

    def fetch_feedback(self, assignment: str) -> list[str]:
        """Click "Fetch Feedback" and return the feedback pages now in the student's folder."""
        self.refresh()
        button = self.page.locator(f"#submitted_assignments_list .list_item:has-text('{assignment}') "
                                   "button:has-text('Fetch Feedback')").first
        button.click()
        self.page.wait_for_timeout(2500)
        pages = []
        listing = self.page.request.get(self.api(f"{assignment}/feedback"))
        if not listing.ok:
            return pages
        for folder in listing.json()["content"]:
            for item in self.page.request.get(self.api(folder["path"])).json()["content"]:
                if item["name"].endswith(".html"):
                    page = self.page.request.get(f"{self.base}/user/{self.name}/files/{item['path']}")
                    pages.append(page.text())
        return pages


@dataclass
class Cycle:
    room: hub.Classroom
    base: str
    passwords: dict[str, str]
    results: dict[str, dict[str, GradeResult]] = field(default_factory=dict)
    feedback: dict[str, list[str]] = field(default_factory=dict)
    formgrader: str = ""
    formgrader_api: list[dict] = field(default_factory=list)
    grades: list[dict[str, str]] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    access: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    buttons: dict[str, str] = field(default_factory=dict)
    restored: tuple[bool, bool] = (False, False)
    cli: dict[str, str] = field(default_factory=dict)


def try_as(room: hub.Classroom, name: str, path: Path) -> str:
    """``"denied"`` or ``"allowed"``: can ``name`` list (a folder) or read (a file) ``path``?"""
    code = (f"import os\ntry:\n    os.listdir({str(path)!r}) if os.path.isdir({str(path)!r}) else open({str(path)!r}).read(1)\n"
            "    print('allowed')\nexcept PermissionError:\n    print('denied')\nexcept FileNotFoundError:\n"
            "    print('missing')\n")
    return python_as(room, name, code)


def class_command(room: hub.Classroom, *args: str) -> str:
    """Run ``llmcourse class --dir ROOM ARGS`` as the instructor would (as root); return what it printed."""
    done = subprocess.run([sys.executable, "-m", "llmcourse.cli", "class", "--dir", str(room.root), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def python_as(room: hub.Classroom, name: str, code: str) -> str:
    """Run ``code`` as ``name`` in a class server's environment (as a kernel would); return its last line."""
    env = {**hub.server_environment(room), "HOME": f"/home/{name}"}
    done = subprocess.run([*accounts.as_user(name), str(room.python), "-c", code], capture_output=True, text=True,
                          env=env, cwd=f"/home/{name}")
    return (done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""])[-1]


SHARED_MODELS = {  # what a student's kernel does with the class's model folder, and what it prints
    "load SmolLM2's tokenizer": "from llmcourse import models\nprint(len(models.load_smollm2_tokenizer()))",
    "write in the folder": ("import os\ntry:\n    open(os.environ['LLMCOURSE_CACHE'] + '/x', 'w')\n"
                            "    print('allowed')\nexcept PermissionError:\n    print('denied')"),
    "load a model the exercises do not use": ("from llmcourse import models\ntry:\n"
                                              "    models.load_course_model('shakespeare-char-gpt', progress=False)\n"
                                              "except RuntimeError as error:\n    print(error)"),
}


@pytest.fixture(scope="module")
def cycle() -> Iterator[Cycle]:
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="llmcourse-class-", dir="/tmp"))
    room = hub.Classroom(root)
    solutions_mode = stat.S_IMODE((REPO_ROOT / "solutions").stat().st_mode)
    process = None
    try:
        hub.setup(room, STUDENTS, TEACHER)
        with open(room.passwords_file) as handle:
            passwords = {row["name"]: row["password"] for row in csv.DictReader(handle)}
        port = free_ports()
        process = hub.start(room, port)
        run = Cycle(room, f"http://127.0.0.1:{port}", passwords)
        run.seconds["setup and start"] = time.perf_counter() - started
        now = datetime.utcnow()
        instructor.release(room, EX02, due=now + timedelta(days=1))
        instructor.release(room, EX01, due=now - timedelta(days=1))
        run.seconds["release"] = time.perf_counter() - started - sum(run.seconds.values())

        right02, right01 = answers(EX02), answers(EX01)
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            people = {name: Student(browser, run.base, name, passwords[name]) for name in (ANA, BEN, CAI, DEV)}
            for name, person in people.items():
                if name != DEV:
                    person.fetch(EX02)
            people[ANA].answer(EX02, right02)
            people[ANA].submit(EX02)
            people[ANA].fetch(EX01)
            people[ANA].answer(EX01, right01)
            people[ANA].submit(EX01)
            people[BEN].answer(EX02, right02)
            people[BEN].submit(EX02)
            people[BEN].answer(EX02, {**right02, "causal_solution": right02["causal_solution"] + BROKEN_MASK})
            time.sleep(1.1)  # nbgrader's timestamps tell the two submissions apart
            people[BEN].submit(EX02)
            people[CAI].answer(EX02, {**right02, "causal_solution": right02["causal_solution"] + "\n" + TAMPER})
            people[CAI].submit(EX02)
            run.seconds["students"] = time.perf_counter() - started - sum(run.seconds.values())

            graded = time.perf_counter()
            run.results[EX02] = {r.student_id: r for r in instructor.grade(room, EX02, jobs=2, progress=False)}
            run.seconds["grade ex02 (3 submissions, 2 jobs)"] = time.perf_counter() - graded
            run.results[EX01] = {r.student_id: r for r in instructor.grade(room, EX01, jobs=2, progress=False)}
            run.seconds["grade ex01 (1 submission)"] = time.perf_counter() - graded - run.seconds[
                "grade ex02 (3 submissions, 2 jobs)"]

            for name in (ANA, BEN, CAI):
                run.feedback[name] = people[name].fetch_feedback(EX02)
            run.feedback[ANA + "/" + EX01] = people[ANA].fetch_feedback(EX01)

            teacher = Student(browser, run.base, TEACHER, passwords[TEACHER])
            teacher.page.goto(f"{run.base}/user/{TEACHER}/formgrader/manage_submissions/{EX02}")
            teacher.page.wait_for_selector(f"text={BEN}", timeout=30_000)
            run.formgrader = teacher.page.inner_text("body")
            reply = teacher.page.request.get(f"{run.base}/user/{TEACHER}/formgrader/api/submissions/{EX02}")
            run.formgrader_api = reply.json() if reply.ok else []
            for person in [*people.values(), teacher]:
                run.remote += person.remote
            browser.close()

        # The formgrader's Generate Feedback and Autograde buttons run these: they refuse (hidden tests in the
        # feedback, no sandbox), and `class grade` puts back what nbgrader removed before refusing.
        for button in ("generate_feedback", "autograde"):
            try:
                instructor.nbgrader(room, button, EX02, "--student", ANA, "--force")
                run.buttons[button] = "ran"
            except RuntimeError as error:
                run.buttons[button] = ("refused" if f"llmcourse class grade {EX02}" in str(error)
                                       else str(error)[-800:])
        # ... and `llmcourse class grade` on the command line puts back what nbgrader removed before refusing
        run.cli["grade"] = class_command(room, "grade", EX02)
        run.restored = ((room.course / "feedback" / ANA / EX02 / f"{EX02}.html").is_file(),
                        (room.course / "autograded" / ANA / EX02).is_dir())

        run.cli["grades"] = class_command(room, "grades")
        with open(root / "grades.csv") as handle:  # where `class grades` writes by default
            run.grades = list(csv.DictReader(handle))
        inbound = room.exchange / "llmcourse" / "inbound"
        # nbgrader keeps a submission readable to whoever knows its folder's name, which ends in 72 random bits
        # (12 characters of base64): with the folder unlistable, nobody else learns it.
        run.access["random part of a submission's name"] = str(min(
            len(p.name.rsplit("+", 1)[1]) for p in inbound.iterdir()))
        run.access.update({
            "inbound folder": try_as(room, CAI, inbound),
            "ana's home": try_as(room, CAI, Path(f"/home/{ANA}")),
            "the course's solutions": try_as(room, CAI, room.course / "solutions"),
            "the repository's solutions": try_as(room, CAI, REPO_ROOT / "solutions"),
            "the released feedback": try_as(room, CAI, room.exchange / "llmcourse" / "feedback"),
            "the gradebook": try_as(room, CAI, room.course / "gradebook.db"),
            "the passwords": try_as(room, CAI, room.passwords_file),
            "the released assignment": try_as(room, CAI,
                                              room.exchange / "llmcourse" / "outbound" / EX02 / f"{EX02}.ipynb"),
        })
        run.models = {what: python_as(room, CAI, code) for what, code in SHARED_MODELS.items()}
        run.seconds["whole cycle"] = time.perf_counter() - started
        print("\nclass cycle, seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()))
        yield run
    finally:
        if process is not None:
            hub.stop(process)
        for name in [TEACHER, *STUDENTS]:
            accounts.remove_account(name)
        shutil.rmtree(root, ignore_errors=True)
        os.chmod(REPO_ROOT / "solutions", solutions_mode)


def test_scores_follow_what_each_student_submitted(cycle: Cycle) -> None:
    ex02 = cycle.results[EX02]
    assert sorted(ex02) == [ANA, BEN, CAI]  # dev never submitted
    assert ex02[ANA].score == ex02[ANA].max_score == 12 and ex02[ANA].error is None
    assert ex02[BEN].score == 10, [t for t in ex02[BEN].tests if not t.passed]  # the latest, partly wrong
    assert ex02[CAI].error and "changed how the kernel runs code" in ex02[CAI].error and ex02[CAI].score < 12
    assert cycle.results[EX01][ANA].score == cycle.results[EX01][ANA].max_score


def test_the_gradebook_and_the_formgrader_hold_the_sandboxed_scores(cycle: Cycle) -> None:
    by_student = {row["student"]: row for row in cycle.formgrader_api}
    assert {ANA, BEN, CAI} <= set(by_student), cycle.formgrader_api
    assert by_student[ANA]["score"] == 12 and by_student[BEN]["score"] == 10
    assert by_student[CAI]["score"] == cycle.results[EX02][CAI].score
    # auto-graded: nothing waits for a manual grade, and each row names its student (not "None, None")
    assert [row["needs_manual_grade"] for row in cycle.formgrader_api] == [False] * len(cycle.formgrader_api)
    assert "None, None" not in cycle.formgrader and by_student[ANA]["last_name"] == ANA
    for name in (ANA, BEN, CAI):
        assert name in cycle.formgrader


def test_each_student_fetches_only_their_own_feedback_without_hidden_tests(cycle: Cycle) -> None:
    secret = hidden_lines(EX02)
    assert len(secret) > 20
    for name in (ANA, BEN, CAI):
        pages = cycle.feedback[name]
        assert len(pages) == 1, (name, len(pages))
        text = pages[0]
        assert f"{cycle.results[EX02][name].score:g}" in text
        others = [other for other in (ANA, BEN, CAI) if other != name]
        assert not [other for other in others if other in text]
        assert not [line for line in secret if line in text], name
    assert len(cycle.feedback[ANA + "/" + EX01]) == 1


def test_grades_go_out_as_csv_with_late_and_missing_work(cycle: Cycle) -> None:
    rows = {(row["student"], row["assignment"]): row for row in cycle.grades}
    assert len(rows) == 2 * len(STUDENTS)  # every student, every assignment
    assert rows[(ANA, EX02)]["score"] == "12.0" and rows[(ANA, EX02)]["status"] == "on time"
    assert rows[(BEN, EX02)]["score"] == "10.0" and rows[(BEN, EX02)]["test_causal_mask"] == "0.0"
    assert rows[(ANA, EX01)]["status"] == "late" and int(rows[(ANA, EX01)]["seconds_late"]) > 80_000
    assert rows[(DEV, EX02)]["status"] == rows[(DEV, EX01)]["status"] == "missing"
    assert rows[(DEV, EX02)]["score"] == ""


def test_a_student_reads_only_released_work(cycle: Cycle) -> None:
    assert cycle.access.pop("the released assignment") == "allowed"
    assert int(cycle.access.pop("random part of a submission's name")) >= 12
    assert cycle.access == {what: "denied" for what in cycle.access}


def test_the_browser_fetched_nothing_remote(cycle: Cycle) -> None:
    assert cycle.remote == []


def test_students_kernels_load_the_shared_models_and_cannot_change_them(cycle: Cycle) -> None:
    assert cycle.models["load SmolLM2's tokenizer"] == "49152", cycle.models
    assert cycle.models["write in the folder"] == "denied"
    # a model that is not there cannot be trained in the shared folder; the student is told what to do
    assert "ask the instructor to run `llmcourse class setup` again" in cycle.models[
        "load a model the exercises do not use"], cycle.models
    assert sorted(p.name for p in cycle.room.models.iterdir()) == models.models_used_by(
        [REPO_ROOT / "exercises", REPO_ROOT / "solutions"])


def test_the_formgraders_own_grading_and_feedback_refuse_and_class_grade_restores(cycle: Cycle) -> None:
    assert cycle.buttons == {"generate_feedback": "refused", "autograde": "refused"}, cycle.buttons
    assert cycle.restored == (True, True)
    # ana's submission graded again (nbgrader removed its graded copy); the others reused, the missing student named
    assert f"{ANA}: 12 / 12" in cycle.cli["grade"] and f"{BEN}: 10 / 12" in cycle.cli["grade"], cycle.cli["grade"]
    assert "1 graded in" in cycle.cli["grade"] and "2 unchanged since the last run, reused" in cycle.cli["grade"]
    assert f"no submission from 1: {DEV}" in cycle.cli["grade"]
    assert f"written to {cycle.room.root / 'grades.csv'}" in cycle.cli["grades"]
