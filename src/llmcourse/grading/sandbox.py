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

from .cgroups import empty_cgroup, make_cgroups, out_of_memory, probe_cgroups, remove_cgroup
from .settings import PRIVATE_CACHE_FOLDERS, REPO_ROOT, SOLUTIONS_DIR

GiB = 2**30
MiB = 2**20
SANDBOX_ENV = "LLMCOURSE_SANDBOX"  # "off": run kernels without bubblewrap (limits still apply)
RUN_MARKER = "LLMCOURSE_SANDBOX_RUN"  # in every kernel's environment, to find what it left behind
WRAPPER = Path(__file__).with_name("kernel_wrapper.py")
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
    support.cgroups, problems, support.cgroup_version = probe_cgroups()
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
        cgroups = make_cgroups(self.support.cgroups, self.support.cgroup_version, marker, self.limits)
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
        return path is not None and out_of_memory(path, self.support.cgroup_version, self.limits.memory_bytes)

    def finish(self, run: KernelRun) -> int:
        """End every process the kernel left, remove its cgroups and working copy; return how many were ended."""
        ended = 0
        folders = set(run.cgroups.values())  # v2: one folder for both controllers
        for path in folders:
            ended += empty_cgroup(path)
        ended += kill_marked(run.marker)
        for path in folders:
            remove_cgroup(path)
        shutil.rmtree(run.workdir, ignore_errors=True)
        return ended

    def close(self) -> None:
        """Remove what is left of every kernel (the course folder itself is removed by its owner)."""
        for parent in set(self.support.cgroups.values()):
            for path in parent.glob(f"{os.getpid()}-*"):
                empty_cgroup(path)
                remove_cgroup(path)


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
