"""A class on one machine: JupyterHub on 127.0.0.1, nbgrader's exchange, one Unix account per person.

``Classroom(root)`` is the class's folder (``_class/`` in the repository unless told otherwise):

    roster.json      who is in the class, with password hashes (root only)
    passwords.csv    the passwords to hand out, written when they are made (root only)
    exchange/        nbgrader's exchange: released assignments, submissions, feedback (nbgrader's modes)
    course/          the instructor's course folder: nbgrader_config.py, solutions/, exercises/,
                     and what nbgrader adds (submitted/, autograded/, feedback/, gradebook.db)
    jupyter/student/, jupyter/instructor/   the Jupyter settings of each kind of single-user server
    models/          the cached models the exercises load (SmolLM2), made once and read-only to all:
                     every server's LLMCOURSE_CACHE, so no student converts or trains one in their home
    hub/             JupyterHub's database, cookie secret, configuration and log

Students get JupyterLab with nbgrader's assignment list only; the instructor gets the formgrader
too, on the course folder. Nothing is fetched at run time: news and update checks are off, and
the proxy (configurable-http-proxy) comes from the project's own ``package.json``.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..grading.settings import REPO_ROOT
from . import accounts
from .roster import Roster

COURSE_ID = "llmcourse"
DEFAULT_PORT = 8000
PROXY = REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"

# JupyterLab as a single-user server, offline: no news, no update checks, no PyPI extension manager.
_LAB_OFFLINE = {
    "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
               "extension_manager": "readonly"},
}
_STUDENT_EXTENSIONS = {  # nbgrader's server extensions a student's server loads
    "nbgrader.server_extensions.formgrader": False,
    "nbgrader.server_extensions.validate_assignment": True,
    "nbgrader.server_extensions.assignment_list": True,
    "nbgrader.server_extensions.course_list": False,
}
# JupyterLab plugins turned off: the news prompt ("Would you like to get notified about official Jupyter
# news?") for everyone, and for students nbgrader's instructor tools.
NO_NEWS = ("@jupyterlab/apputils-extension:announcements",)
_STUDENT_HIDDEN_LAB = (*NO_NEWS, "@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment",
                       "@jupyter/nbgrader:course-list")


@dataclass(frozen=True)
class Classroom:
    """The folders and files of one class (module docstring)."""

    root: Path

    @property
    def roster_file(self) -> Path:
        return self.root / "roster.json"

    @property
    def passwords_file(self) -> Path:
        return self.root / "passwords.csv"

    @property
    def exchange(self) -> Path:
        return self.root / "exchange"

    @property
    def course(self) -> Path:
        return self.root / "course"

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    @property
    def hub_config(self) -> Path:
        return self.hub_dir / "jupyterhub_config.py"

    @property
    def models(self) -> Path:
        """The models the exercises load, read-only to every account (students' kernels use it as their cache)."""
        return self.root / "models"

    def jupyter_dir(self, kind: str) -> Path:
        return self.root / "jupyter" / kind

    @property
    def python(self) -> Path:
        """The interpreter of the single-user servers and kernels (``setup`` makes it)."""
        return self.root / "venv" / "bin" / "python"

    def roster(self) -> Roster:
        return Roster.load(self.roster_file)


def default_classroom() -> Classroom:
    return Classroom(Path(os.environ.get("LLMCOURSE_CLASS_DIR") or REPO_ROOT / "_class"))


def why_no_class() -> str | None:
    """None where a class can run here; else what is missing and what to do."""
    reason = accounts.why_no_accounts()
    if reason:
        return reason
    if not PROXY.exists():
        return (f"no {PROXY.relative_to(REPO_ROOT)}: run `npm ci` in the repository (the Makefile does it "
                "when npm is installed)")
    return None


def _open_to_all(path: Path) -> bool:
    """Whether any account may run ``path`` (every folder above it searchable by others)."""
    path = path.resolve()
    return all(parent.stat().st_mode & 0o001 for parent in path.parents) and bool(path.stat().st_mode & 0o005)


def _check_supported(python: Path) -> None:
    """Fail, naming them, if some of the course's packages need a newer Python than ``python``.

    The class's interpreter reads the course's packages, which pip chose for the course's own Python;
    one that needs a later patch release fails only when a student's server uses it.
    """
    from importlib.metadata import distributions

    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    done = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True)
    version = done.stdout.strip()
    too_new = []
    for dist in distributions():
        needs = dist.metadata.get("Requires-Python")
        try:
            if needs and not SpecifierSet(needs).contains(version, prereleases=True):
                too_new.append(f"{dist.metadata['Name']} {dist.version} (Python {needs})")
        except InvalidSpecifier:
            continue
    if too_new:
        raise RuntimeError(f"the class's servers would run on {python} (Python {version}), which these packages of "
                           f"the course do not support: {', '.join(sorted(too_new))}. Pin versions that do in "
                           "requirements.txt, or install a newer Python of the same minor version system-wide.")


def _make_class_python(classroom: Classroom) -> None:
    """A virtual environment every account can run, that sees the course's packages.

    The course's ``.venv`` may rest on an interpreter in a private home (pyenv under /root, say), which
    students cannot run. Then Python of the same minor version from elsewhere (``/usr/bin``) is used,
    its environment reading the course's site-packages through a ``.pth`` file (the same ABI).
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable).resolve(), Path(sys.base_prefix) / "bin" / version,
                  Path("/usr/bin") / version, Path("/usr/local/bin") / version]
    base = next((c for c in candidates if c.exists() and _open_to_all(c)), None)
    if base is None:
        raise RuntimeError(f"no {version} that every account may run (tried {', '.join(map(str, candidates))}): "
                           f"install {version} system-wide, or make the course's interpreter readable by all")
    _check_supported(base)
    venv = classroom.python.parent.parent
    if not classroom.python.exists():
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site = venv / "lib" / version / "site-packages"
    course_site = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()
                       and str(Path(p)).startswith(sys.prefix))
    (site / "llmcourse-course.pth").write_text(f"import site; site.addsitedir({str(course_site)!r})\n")
    # The course's commands (nbgrader, jupyter, alembic, which nbgrader runs to make a gradebook...) again,
    # on this interpreter.
    for script in Path(sys.prefix, "bin").iterdir():
        if not script.is_file() or script.is_symlink() or (venv / "bin" / script.name).exists():
            continue
        with open(script, "rb") as handle:
            first = handle.readline()
        if first.startswith(b"#!") and b"python" in first and Path(sys.prefix).as_posix().encode() in first:
            text = script.read_bytes().split(b"\n", 1)[1]
            (venv / "bin" / script.name).write_bytes(f"#!{classroom.python}\n".encode() + text)
            (venv / "bin" / script.name).chmod(0o755)
    for folder, dirs, files in os.walk(venv):
        for entry in [folder, *(os.path.join(folder, f) for f in dirs + files)]:
            if not os.path.islink(entry):
                mode = os.stat(entry).st_mode
                os.chmod(entry, mode | 0o004 | (0o001 if os.path.isdir(entry) or mode & 0o100 else 0))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # the same file, no second copy on disk (it is read-only to the class)
    except OSError:
        shutil.copy2(source, target)


def share_models(classroom: Classroom, progress: bool = True) -> list[str]:
    """Put the models that the course's notebooks load in ``classroom.models``; return their names.

    Each is made in the instructor's cache first if it is not there (``models.prepare_model``: minutes,
    once), then linked (or copied) into the class's folder, which every account may read and none but
    root may change. A model already shared is replaced by the cache's current one.
    """
    from .. import models

    names = models.models_used_by([classroom.course / "exercises", classroom.course / "solutions"])
    shared = classroom.models
    shared.mkdir(exist_ok=True)
    for name in names:
        models.prepare_model(name, progress=progress)
        staging = shared / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(models.cache_dir() / name, staging, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("*.partial", ".*.lock"))
        for folder, _, files in os.walk(staging):
            os.chmod(folder, 0o755)
            for file in files:
                os.chmod(os.path.join(folder, file), 0o644)
        shutil.rmtree(shared / name, ignore_errors=True)
        staging.rename(shared / name)
    shared.chmod(0o755)  # root's, as everything linked or copied in it
    return names


def server_environment(classroom: Classroom) -> dict[str, str]:
    """The environment of every single-user server of the class, and so of its kernels."""
    return {"PATH": f"{classroom.python.parent}:/usr/local/bin:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "LLMCOURSE_CACHE": str(classroom.models),
            "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")}  # JupyterLab's and nbgrader's extensions


def _nbgrader_config(exchange: Path, course: Path | None) -> str:
    lines = ['"""nbgrader settings of a class server, written by `llmcourse class setup`."""', "",
             "c = get_config()  # noqa: F821", f"c.CourseDirectory.course_id = {COURSE_ID!r}",
             f"c.Exchange.root = {str(exchange)!r}", "c.Exchange.path_includes_course = False"]
    if course is not None:
        lines += [f"c.CourseDirectory.root = {str(course)!r}", 'c.CourseDirectory.source_directory = "solutions"',
                  'c.CourseDirectory.release_directory = "exercises"',
                  "from llmcourse.grading.settings import apply_grading_settings", "apply_grading_settings(c)",
                  "# The formgrader's Autograde and Generate Feedback buttons refuse: `llmcourse class grade` does both",
                  "# in the sandbox, without hidden tests in the feedback (llmcourse.classroom.formgrader).",
                  "from llmcourse.classroom.formgrader import UseClassGrade",
                  "c.Autograde.sanitize_preprocessors = [UseClassGrade]",
                  "c.GenerateFeedback.preprocessors = [UseClassGrade]"]
    return "\n".join(lines) + "\n"


def write_page_config(folder: Path, disabled: tuple[str, ...] = NO_NEWS) -> None:
    """``folder/labconfig/page_config.json`` turning the JupyterLab plugins ``disabled`` off (a settings folder
    of ``JUPYTER_CONFIG_PATH``)."""
    import json

    (folder / "labconfig").mkdir(parents=True, exist_ok=True)
    (folder / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {name: True for name in disabled}}, indent=1))


def _write_jupyter_settings(folder: Path, exchange: Path, course: Path | None) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nbgrader_config.py").write_text(_nbgrader_config(exchange, course))
    server = {**_LAB_OFFLINE}
    if course is None:
        server["ServerApp"] = {"jpserver_extensions": _STUDENT_EXTENSIONS}
    write_page_config(folder, NO_NEWS if course is not None else _STUDENT_HIDDEN_LAB)
    for name in ("jupyter_server_config.json", "jupyter_lab_config.json"):
        (folder / name).write_text(json.dumps(server, indent=1))
    folder.chmod(0o755)


def setup(classroom: Classroom, students: list[str], instructor: str = "instructor",
          progress: bool = True) -> dict[str, str]:
    """Make (or extend) the class: accounts, folders, settings; return the passwords made this time.

    Run again with more students to add them; existing people keep their password and files.
    """
    reason = why_no_class()
    if reason:
        raise RuntimeError(f"cannot set up a class here: {reason}")
    root = classroom.root
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)  # students pass through to the exchange, and list nothing
    if classroom.roster_file.exists():
        roster = classroom.roster()
        if roster.instructor != instructor:
            raise ValueError(f"this class's instructor is {roster.instructor!r}, not {instructor!r}")
        roster.students += [name for name in students if name not in roster.students]
        roster.__post_init__()
    else:
        roster = Roster(instructor, list(students))
    for name in roster.people:
        accounts.ensure_account(name)
    made = roster.new_passwords()
    roster.save(classroom.roster_file)
    if made:
        new_file = not classroom.passwords_file.exists()
        with open(classroom.passwords_file, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["name", "role", "password"])
            for name, password in made.items():
                writer.writerow([name, "instructor" if name == instructor else "student", password])
        classroom.passwords_file.chmod(0o600)

    _make_class_python(classroom)
    classroom.exchange.mkdir(exist_ok=True)
    classroom.exchange.chmod(0o777)  # what nbgrader's release asks of its root; it sets the modes below it
    course = classroom.course
    course.mkdir(exist_ok=True)
    for name in ("solutions", "exercises"):
        if not (course / name).exists():
            shutil.copytree(REPO_ROOT / name, course / name)
    (course / "nbgrader_config.py").write_text(_nbgrader_config(classroom.exchange, course))
    accounts.give(course, instructor, 0o700)
    _write_jupyter_settings(classroom.jupyter_dir("student"), classroom.exchange, None)
    _write_jupyter_settings(classroom.jupyter_dir("instructor"), classroom.exchange, course)
    # The repository's own solutions would otherwise be open to every account on the machine.
    (REPO_ROOT / "solutions").chmod(0o700)
    share_models(classroom, progress=progress)
    classroom.hub_dir.mkdir(exist_ok=True)
    classroom.hub_dir.chmod(0o700)
    return made


def hub_config(classroom: Classroom, port: int = DEFAULT_PORT) -> str:
    """The text of ``jupyterhub_config.py`` for the class."""
    roster = classroom.roster()
    course_venv = Path(sys.prefix)
    env = server_environment(classroom)
    return f'''"""JupyterHub for the class, written by `llmcourse class start`: edit the class, not this file."""

c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {port + 1}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{port + 2}"
c.JupyterHub.db_url = "sqlite:///{classroom.hub_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = "{classroom.hub_dir / 'cookie_secret'}"
c.JupyterHub.pid_file = "{classroom.hub_dir / 'jupyterhub.pid'}"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.authenticator_class = "llmcourse.classroom.auth.RosterAuthenticator"
c.RosterAuthenticator.roster_file = "{classroom.roster_file}"
c.Authenticator.allowed_users = {set(roster.people)!r}
c.Authenticator.admin_users = {{{roster.instructor!r}}}
c.JupyterHub.load_groups = {{
    "nbgrader-{COURSE_ID}": {{"users": {roster.students!r}}},
    "formgrade-{COURSE_ID}": {{"users": [{roster.instructor!r}]}},
}}
c.ConfigurableHTTPProxy.command = ["{PROXY}"]
c.ConfigurableHTTPProxy.pid_file = "{classroom.hub_dir / 'proxy.pid'}"
c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"
c.Spawner.cmd = ["{classroom.python}", "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.environment = {env!r}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120


def per_person(spawner):
    """The instructor's server opens on the course folder with the formgrader; a student's on their home."""
    name = spawner.user.name
    kind = "instructor" if name == {roster.instructor!r} else "student"
    spawner.environment["JUPYTER_CONFIG_PATH"] = "{classroom.root / 'jupyter'}/" + kind + ":{course_venv / 'etc' / 'jupyter'}"
    if kind == "instructor":
        spawner.notebook_dir = "{classroom.course}"


c.Spawner.pre_spawn_hook = per_person
'''


def start(classroom: Classroom, port: int = DEFAULT_PORT, wait_s: float = 60) -> subprocess.Popen:
    """Start JupyterHub for the class in the background; return once it answers on ``port``."""
    reason = why_no_class()
    if reason:
        raise RuntimeError(f"cannot start the class here: {reason}")
    classroom.hub_config.write_text(hub_config(classroom, port))
    log = open(classroom.hub_dir / "jupyterhub.log", "ab")
    process = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", str(classroom.hub_config)],
                               cwd=classroom.hub_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterHub exited at start (code {process.returncode}); see "
                               f"{classroom.hub_dir / 'jupyterhub.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hub/api", timeout=2) as reply:
                if reply.status == 200:
                    return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"JupyterHub did not answer on port {port} within {wait_s:.0f} s; see "
                       f"{classroom.hub_dir / 'jupyterhub.log'}")


def stop(process: subprocess.Popen, grace_s: float = 15) -> None:
    """Stop the hub, its proxy and every single-user server it started (they share its session)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the hub stops the servers (cleanup_servers) and the proxy
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything left in its session
    except ProcessLookupError:
        pass
    process.wait()
