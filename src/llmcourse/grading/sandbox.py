"""The grader's sandbox: what a submission's kernel can see and use, and cleaning up after it.

Each grading course has one ``KernelSandbox``. Before each kernel starts, ``prepare`` makes
the submission's own working copy, its cgroups and the plan that ``kernel_wrapper.py`` (the
kernelspec's command) follows; ``finish`` ends whatever the kernel left running and removes
all of it. What is isolated, and what is not, is listed in the instructor guide
(``instructor_guide.md``, "The sandbox: what is isolated and what is not").

With bubblewrap (``bwrap``) the kernel runs in new user (uid 1000, no capabilities), pid,
network (loopback only), ipc, uts and cgroup namespaces, with an empty environment, ``/usr``
and the Python installation read-only, a private size-limited ``/tmp``, and only two folders
of the grader's: the submission's working copy (writable) and a private socket folder
(kernels talk to the grader over Unix sockets, ``KernelManager.transport = "ipc"``).
Without bubblewrap (not installed, user namespaces off, or ``LLMCOURSE_SANDBOX=off``) the
kernel runs directly, with the same resource limits and cgroups, and ``grade`` warns that it
is not sandboxed.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from llmcourse.cache import cache_dir

from .settings import PRIVATE_CACHE_FOLDERS, REPO_ROOT, SOLUTIONS_DIR

GiB = 2**30
MiB = 2**20
SANDBOX_ENV = "LLMCOURSE_SANDBOX"  # "off": run kernels without bubblewrap (limits still apply)
RUN_MARKER = "LLMCOURSE_SANDBOX_RUN"  # in every kernel's environment, to find what it left behind
WRAPPER = Path(__file__).with_name("kernel_wrapper.py")
CGROUP_V1 = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")
SANDBOX_UID = 1000


@dataclass(frozen=True)
class Limits:
    """Resource limits of one grading kernel (and everything it starts)."""

    memory_bytes: int = 2 * GiB  # memory cgroup (v1 or v2): the kernel is killed beyond it
    address_space_bytes: int = 4 * GiB  # RLIMIT_AS: allocations fail (MemoryError) beyond it
    pids: int = 128  # pids cgroup (v1 or v2): fork fails beyond it
    file_size_bytes: int = 64 * MiB  # RLIMIT_FSIZE: writing a larger file fails (EFBIG)
    tmp_bytes: int = 256 * MiB  # size of the private /tmp (bubblewrap only)
    open_files: int = 1024  # RLIMIT_NOFILE


@dataclass
class Support:
    """What this machine allows: bubblewrap, memory and pids cgroups (v1 or v2), and why not when not."""

    bwrap: str | None = None
    cgroups: dict[str, Path] = field(default_factory=dict)  # controller -> our parent folder (v2: one for both)
    problems: list[str] = field(default_factory=list)
    cgroup_version: int | None = None  # 1 (a hierarchy per controller), 2 (the unified one) or None

    @property
    def sandboxed(self) -> bool:
        """True when kernels run under bubblewrap."""
        return self.bwrap is not None

    def describe(self) -> str:
        """One line for a person: how kernels run here."""
        if self.sandboxed:
            how = "sandboxed with bubblewrap (no network, private /tmp, only the submission's folder writable)"
        else:
            how = "UNSANDBOXED (submission code can read and write what this user can, and reach the network)"
        limits = "memory and process cgroups" if len(self.cgroups) == 2 else (
            f"{' and '.join(sorted(self.cgroups))} cgroup" if self.cgroups else "no cgroups")
        if self.cgroups:
            limits += f" (cgroup v{self.cgroup_version})"
        return f"grading kernels run {how}; rlimits on address space, file size and core dumps; {limits}"

    def warning(self) -> str | None:
        """The warning to show when kernels are not fully sandboxed, else None."""
        if self.sandboxed and len(self.cgroups) == 2:
            return None
        text = f"llmcourse grade: {self.describe()}: {'; '.join(self.problems)}"
        if not self.sandboxed:
            text += (". Grade only submissions you trust this way, or install bubblewrap "
                     "(as root: sh scripts/system_deps.sh, or apt-get install bubblewrap)")
        return text


def interpreter_paths() -> list[Path]:
    """Folders the kernel needs read-only: the Python installation, the venv, editable sources.

    Never a folder holding the course's solutions (an editable install of a repository's
    ``src/`` is fine; the repository root is refused).
    """
    paths: list[Path] = []
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        paths.append(Path(prefix).resolve())
    import site

    for site_dir in site.getsitepackages():
        for pth in Path(site_dir).glob("__editable__*.pth"):
            for line in pth.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith(("import ", "#")) and Path(line).is_dir():
                    paths.append(Path(line).resolve())
    safe = []
    for path in sorted(set(paths)):
        if path == Path("/") or SOLUTIONS_DIR.resolve().is_relative_to(path) or path == REPO_ROOT.resolve():
            warnings.warn(f"not mounting {path} in the grading sandbox: it holds the solutions", stacklevel=2)
            continue
        if path.is_relative_to("/usr"):
            continue  # mounted whole
        safe.append(path)
    # Drop folders inside others already listed.
    return [p for p in safe if not any(p != q and p.is_relative_to(q) for q in safe)]


def _root_links() -> list[str]:
    # /bin, /lib... are links into /usr on merged-/usr systems, real folders elsewhere.
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ("/etc/ld.so.cache", "/etc/localtime"):
        if Path(name).exists():
            args += ["--ro-bind", name, name]
    return args


MODEL_CACHE_IN_SANDBOX = "/opt/llmcourse-models"

def _model_cache_binds() -> list[str]:
    # The course's pretrained models, read-only; not the grading results nor the exchange beside them.
    cache = cache_dir()
    if not cache.is_dir():
        return []
    args = ["--dir", MODEL_CACHE_IN_SANDBOX]
    for entry in sorted(cache.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and entry.name not in PRIVATE_CACHE_FOLDERS:
            args += ["--ro-bind", str(entry), f"{MODEL_CACHE_IN_SANDBOX}/{entry.name}"]
    return args


def bwrap_args(workdir: Path, socket_dir: Path, limits: Limits) -> list[str]:
    """bubblewrap's options for a kernel working in ``workdir`` and talking through ``socket_dir``."""
    args = [
        "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--unshare-cgroup-try", "--disable-userns",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "grader",
        "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
        "--ro-bind", "/usr", "/usr", *_root_links(),
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
    ]
    for path in interpreter_paths():
        args += ["--ro-bind", str(path), str(path)]
    args += _model_cache_binds()
    args += ["--bind", str(socket_dir), str(socket_dir), "--bind", str(workdir), str(workdir),
             "--chdir", str(workdir)]
    return args


def _probe_bwrap(bwrap: str) -> str | None:
    """Run a trivial command in the sandbox; return None when it works, else why not."""
    with _temporary_folder() as folder:
        command = [bwrap, *bwrap_args(folder, folder, Limits()), "--", sys.executable, "-I", "-S", "-c", "pass"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={})
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bubblewrap does not start here ({error})"
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"bubblewrap does not work here ({detail}; are unprivileged user namespaces off?)"
    return None


class _temporary_folder:
    def __enter__(self) -> Path:
        import tempfile

        self.path = Path(tempfile.mkdtemp(prefix="llmcourse-probe-"))
        return self.path

    def __exit__(self, *_: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _probe_cgroups_v1() -> tuple[dict[str, Path], list[str]]:
    found: dict[str, Path] = {}
    problems: list[str] = []
    for controller in CONTROLLERS:
        base = CGROUP_V1 / controller
        if not (base / "cgroup.procs").is_file():
            problems.append(f"no v1 {controller} cgroup")
            continue
        parent = base / "llmcourse"
        test = parent / f"probe-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            parent.mkdir(exist_ok=True)
            test.mkdir()
            test.rmdir()
        except OSError as error:
            problems.append(f"cannot create a v1 {controller} cgroup ({error.strerror})")
            continue
        found[controller] = parent
    return found, problems


def unified_cgroup(mounts: str, own: str) -> Path | None:
    """The folder of this process's cgroup in the unified (v2) hierarchy, or None without one.

    ``mounts`` is the text of ``/proc/self/mounts``, ``own`` that of ``/proc/self/cgroup``
    (its ``0::/path`` line names the v2 cgroup).
    """
    mount = next((line.split()[1] for line in mounts.splitlines()
                  if len(line.split()) > 2 and line.split()[2] == "cgroup2"), None)
    relative = next((line[3:] for line in own.splitlines() if line.startswith("0::")), None)
    if mount is None or relative is None:
        return None
    return Path(mount) / relative.lstrip("/")


def _probe_cgroups_v2() -> tuple[dict[str, Path], list[str]]:
    """A parent cgroup for the kernels in the unified hierarchy, when memory and pids are delegated to us.

    The parent is a new child of this process's own cgroup, with both controllers enabled for
    its children; that works when the own cgroup already passes them down (its
    ``cgroup.subtree_control`` lists them: a systemd unit with ``Delegate=yes``, or a container
    given a cgroup of its own), or when we may enable them there.
    """
    try:
        own = unified_cgroup(Path("/proc/self/mounts").read_text(), Path("/proc/self/cgroup").read_text())
    except OSError as error:
        return {}, [f"cannot read this process's cgroup ({error.strerror})"]
    if own is None or not (own / "cgroup.controllers").is_file():
        return {}, ["no cgroup v2 hierarchy"]
    available = set((own / "cgroup.controllers").read_text().split())
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        return {}, [f"cgroup v2 has no {' and '.join(missing)} controller for this process (not delegated)"]
    enabled = set((own / "cgroup.subtree_control").read_text().split())
    try:
        if not set(CONTROLLERS) <= enabled:
            (own / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        parent = own / "llmcourse"
        parent.mkdir(exist_ok=True)
        if not set(CONTROLLERS) <= set((parent / "cgroup.subtree_control").read_text().split()):
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        test = parent / f"probe-{os.getpid()}-{secrets.token_hex(3)}"
        test.mkdir()
        test.rmdir()
    except OSError as error:
        return {}, [f"cannot make cgroup v2 children with memory and pids limits under {own} ({error.strerror})"]
    return dict.fromkeys(CONTROLLERS, parent), []


def _probe_cgroups() -> tuple[dict[str, Path], list[str], int | None]:
    """v1 controllers where the host mounts them, else the unified hierarchy's; the problems of both otherwise."""
    found, problems = _probe_cgroups_v1()
    if len(found) == len(CONTROLLERS):
        return found, problems, 1
    unified, problems_v2 = _probe_cgroups_v2()
    if unified:
        return unified, [], 2
    return found, problems + problems_v2, 1 if found else None


@functools.cache
def probe() -> Support:
    """Find out, once per process, what sandboxing this machine allows."""
    support = Support()
    if os.environ.get(SANDBOX_ENV, "").lower() in {"off", "0", "no", "false"}:
        support.problems.append(f"{SANDBOX_ENV}={os.environ[SANDBOX_ENV]} turns bubblewrap off")
    else:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            support.problems.append("bubblewrap (bwrap) is not installed")
        else:
            problem = _probe_bwrap(bwrap)
            if problem:
                support.problems.append(problem)
            else:
                support.bwrap = bwrap
    support.cgroups, problems, support.cgroup_version = _probe_cgroups()
    support.problems += problems
    return support


@dataclass
class KernelRun:
    """One kernel's sandbox: its working copy, cgroups and marker."""

    workdir: Path
    cgroups: dict[str, Path]
    marker: str


def cpu_threads() -> int:
    """CPU threads a grading kernel may use: ``OMP_NUM_THREADS`` when set, else every core this process may use.

    A test runner or a scheduler that shares the cores between processes sets ``OMP_NUM_THREADS``;
    kernels started from such a process keep to it, since processes running more threads than there
    are cores slow each other down several times over (OpenMP threads spin while they wait).
    """
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        asked = 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(asked, cores) if asked > 0 else cores)


def _kernel_env(home: str, threads: int, marker: str, models: str) -> dict[str, str]:
    return {
        "LLMCOURSE_CACHE": models,
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
        "MPLBACKEND": "agg", "MPLCONFIGDIR": f"{home}/.matplotlib", "IPYTHONDIR": f"{home}/.ipython",
        "PYTHONDONTWRITEBYTECODE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        RUN_MARKER: marker,
    }


def kernel_command() -> list[str]:
    """The ipykernel command the wrapper runs (``-f CONNECTION_FILE`` is added by the wrapper)."""
    return [sys.executable, "-m", "ipykernel_launcher", "--HistoryManager.hist_file=:memory:",
            "--IPKernelApp.log_level=ERROR"]


class KernelSandbox:
    """The sandbox of one grading course: one kernel at a time, each with its own working copy."""

    def __init__(self, root: Path, limits: Limits | None = None, threads: int | None = None,
                 support: Support | None = None):
        self.root = root
        self.limits = limits or Limits()
        self.threads = threads or cpu_threads()
        self.support = support or probe()
        self.socket_dir = root / "run"
        self.plan_path = root / "kernels" / "sandbox-plan.json"
        self.log_path = root / "kernels" / "kernel.log"  # the last kernel's own stdout and stderr
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_dir.chmod(0o700)
        self.plan_path.parent.mkdir(parents=True, exist_ok=True)
        self._count = 0

    @property
    def kernel_ip(self) -> str:
        """``KernelManager.ip`` for the ipc transport: socket paths are ``<ip>-<port>``."""
        return str(self.socket_dir / "kernel")

    def kernelspec_argv(self) -> list[str]:
        """The grading kernelspec's command: the wrapper, with no site-packages (fast start)."""
        return [sys.executable, "-I", "-S", str(WRAPPER), str(self.plan_path), "{connection_file}"]

    def prepare(self, folder: Path) -> KernelRun:
        """Make the next kernel's working copy of ``folder`` (less its notebooks), cgroups and plan."""
        self._count += 1
        marker = f"{os.getpid()}-{self._count}-{secrets.token_hex(4)}"
        workdir = self.root / "work" / f"k{self._count}"
        shutil.copytree(folder, workdir, symlinks=False, dirs_exist_ok=False,
                        ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
        workdir.chmod(0o755)
        cgroups = self._make_cgroups(marker)
        sandboxed = self.support.sandboxed
        plan = {
            "workdir": str(workdir),
            "socket_dir": str(self.socket_dir),
            "log": str(self.log_path),
            "kernel_argv": kernel_command(),
            "env": _kernel_env("/tmp" if sandboxed else str(workdir), self.threads, marker,
                               MODEL_CACHE_IN_SANDBOX if sandboxed else str(cache_dir())),
            "limits": {"address_space": self.limits.address_space_bytes, "file_size": self.limits.file_size_bytes,
                       "core": 0, "open_files": self.limits.open_files},
            "cgroups": sorted({str(path) for path in cgroups.values()}),  # v2: one folder for both
            "bwrap": self.support.bwrap,
            "bwrap_args": bwrap_args(workdir, self.socket_dir, self.limits) if sandboxed else [],
        }
        self.plan_path.write_text(json.dumps(plan, indent=1))
        return KernelRun(workdir=workdir, cgroups=cgroups, marker=marker)

    def _make_cgroups(self, name: str) -> dict[str, Path]:
        made: dict[str, Path] = {}
        if self.support.cgroup_version == 2:  # one cgroup holds both limits
            settings = {"memory": {"memory.max": self.limits.memory_bytes, "memory.swap.max": 0},
                        "pids": {"pids.max": self.limits.pids}}
        else:
            settings = {"memory": {"memory.limit_in_bytes": self.limits.memory_bytes,
                                   "memory.memsw.limit_in_bytes": self.limits.memory_bytes},
                        "pids": {"pids.max": self.limits.pids}}
        for controller, parent in self.support.cgroups.items():
            path = parent / name
            try:
                path.mkdir(exist_ok=self.support.cgroup_version == 2)
                for key, value in settings[controller].items():
                    if (path / key).exists():
                        (path / key).write_text(str(value))
            except OSError as error:
                warnings.warn(f"no {controller} cgroup for this kernel: {error}", stacklevel=2)
                _remove_cgroup(path)
                continue
            made[controller] = path
        return made

    def kernel_log_tail(self, lines: int = 3) -> str:
        """The last lines the last kernel (or bubblewrap) wrote to its own stdout or stderr."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, self.log_path.stat().st_size - 4096))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def out_of_memory(self, run: KernelRun) -> bool:
        """True when the kernel's memory cgroup killed a process for going over its limit."""
        path = run.cgroups.get("memory")
        if path is None:
            return False
        if self.support.cgroup_version == 2:
            try:
                events = dict(line.split() for line in (path / "memory.events").read_text().splitlines())
                return int(events.get("oom_kill", 0)) > 0 or int(events.get("max", 0)) > 0
            except (OSError, ValueError):
                return False
        try:
            for line in (path / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                    return True
            return int((path / "memory.failcnt").read_text()) > 0 and int(
                (path / "memory.max_usage_in_bytes").read_text()) >= 0.98 * self.limits.memory_bytes
        except (OSError, ValueError):
            return False

    def finish(self, run: KernelRun) -> int:
        """End every process the kernel left, remove its cgroups and working copy; return how many were ended."""
        ended = 0
        folders = set(run.cgroups.values())  # v2: one folder for both controllers
        for path in folders:
            ended += _empty_cgroup(path)
        ended += kill_marked(run.marker)
        for path in folders:
            _remove_cgroup(path)
        shutil.rmtree(run.workdir, ignore_errors=True)
        return ended

    def close(self) -> None:
        """Remove what is left of every kernel (the course folder itself is removed by its owner)."""
        for parent in set(self.support.cgroups.values()):
            for path in parent.glob(f"{os.getpid()}-*"):
                _empty_cgroup(path)
                _remove_cgroup(path)


def _cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _empty_cgroup(path: Path, seconds: float = 5.0) -> int:
    """SIGKILL every process in the cgroup until it is empty (a fork bomb refills it for a while).

    On cgroup v2 ``cgroup.kill`` ends them all at once (Linux 5.14 and later); the loop then
    finds nothing left, or the stragglers of an older kernel.
    """
    ended: set[int] = set()
    if (path / "cgroup.kill").exists():
        ended.update(_cgroup_pids(path))
        try:
            (path / "cgroup.kill").write_text("1")
        except OSError:
            pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = _cgroup_pids(path)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                ended.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    return len(ended)


def _remove_cgroup(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # processes still exiting


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose environment carries ``RUN_MARKER=marker``; return how many.

    The fallback for machines without a pid namespace or cgroups: a submission's daemons
    inherit the kernel's environment unless they clear it.
    """
    needle = f"{RUN_MARKER}={marker}".encode()
    ended = 0
    for _ in range(3):
        found = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc.name), signal.SIGKILL)
                    found += 1
            except (OSError, ValueError):
                continue
        ended += found
        if not found:
            break
        time.sleep(0.05)
    return ended
