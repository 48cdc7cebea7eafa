"""The memory and process limits of grading kernels, as cgroups: v1 where the host mounts the memory
and pids controllers there, else the unified (v2) hierarchy when they are delegated to the grader.

``probe_cgroups`` finds the parent folders once; ``make_cgroups`` makes one kernel's, with its
limits; ``out_of_memory`` says whether the kernel was killed for memory; ``empty_cgroup`` and
``remove_cgroup`` clean up after it.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sandbox import Limits

__all__ = ["CONTROLLERS", "probe_cgroups", "unified_cgroup", "make_cgroups", "out_of_memory", "empty_cgroup",
           "remove_cgroup"]

CGROUP_V1 = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")


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


def probe_cgroups() -> tuple[dict[str, Path], list[str], int | None]:
    """v1 controllers where the host mounts them, else the unified hierarchy's; the problems of both otherwise."""
    found, problems = _probe_cgroups_v1()
    if len(found) == len(CONTROLLERS):
        return found, problems, 1
    unified, problems_v2 = _probe_cgroups_v2()
    if unified:
        return unified, [], 2
    return found, problems + problems_v2, 1 if found else None


def make_cgroups(parents: dict[str, Path], version: int | None, name: str, limits: Limits) -> dict[str, Path]:
    """One kernel's cgroups, ``name`` under each parent, with the memory and process limits written."""
    made: dict[str, Path] = {}
    if version == 2:  # one cgroup holds both limits
        settings = {"memory": {"memory.max": limits.memory_bytes, "memory.swap.max": 0},
                    "pids": {"pids.max": limits.pids}}
    else:
        settings = {"memory": {"memory.limit_in_bytes": limits.memory_bytes,
                               "memory.memsw.limit_in_bytes": limits.memory_bytes},
                    "pids": {"pids.max": limits.pids}}
    for controller, parent in parents.items():
        path = parent / name
        try:
            path.mkdir(exist_ok=version == 2)
            for key, value in settings[controller].items():
                if (path / key).exists():
                    (path / key).write_text(str(value))
        except OSError as error:
            warnings.warn(f"no {controller} cgroup for this kernel: {error}", stacklevel=2)
            remove_cgroup(path)
            continue
        made[controller] = path
    return made


def out_of_memory(path: Path, version: int | None, memory_bytes: int) -> bool:
    """True when the memory cgroup at ``path`` killed a process for going over its limit."""
    if version == 2:
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
            (path / "memory.max_usage_in_bytes").read_text()) >= 0.98 * memory_bytes
    except (OSError, ValueError):
        return False


def _cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def empty_cgroup(path: Path, seconds: float = 5.0) -> int:
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


def remove_cgroup(path: Path) -> None:
    """Remove an emptied cgroup, waiting a little for its processes to finish exiting."""
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # processes still exiting
