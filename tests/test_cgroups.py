"""The grader's cgroups on this machine: which hierarchy it uses (v1 where the host mounts the memory
and pids controllers there, else the unified v2 one when they are delegated), and what it says.

The v2 limits are tested for real only where this machine delegates memory and pids in the unified
hierarchy; elsewhere that test skips and says why (no cgroup filesystem is faked here). The v1 limits
are tested by tests/test_hostile.py (a memory hog and a fork bomb), which uses whichever the grader found.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmcourse.grading import probe
from llmcourse.grading.cgroups import CONTROLLERS, _probe_cgroups_v2, remove_cgroup, unified_cgroup

MiB = 2**20


def test_unified_cgroup_is_found_from_mounts_and_the_own_cgroup() -> None:
    mounts = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
    assert unified_cgroup(mounts, "0::/user.slice/grader.scope\n") == Path("/sys/fs/cgroup/user.slice/grader.scope")
    assert unified_cgroup(mounts, "0::/\n") == Path("/sys/fs/cgroup")
    assert unified_cgroup("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n", "4:memory:/x\n") is None
    # this machine's own files: a cgroup2 mount, if any, names an existing cgroup folder
    here = unified_cgroup(Path("/proc/self/mounts").read_text(), Path("/proc/self/cgroup").read_text())
    if here is not None:
        assert (here / "cgroup.controllers").is_file()


def test_the_grader_says_which_limits_are_in_force() -> None:
    support = probe()
    line = support.describe()
    assert "rlimits on address space" in line
    if support.cgroups:
        assert support.cgroup_version in (1, 2) and f"cgroup v{support.cgroup_version}" in line
    else:
        assert "no cgroups" in line and support.problems
    if len(support.cgroups) < len(CONTROLLERS):
        assert support.warning() and all(problem in support.warning() for problem in support.problems)


def test_v2_probe_explains_what_is_missing() -> None:
    parent, problems = _probe_cgroups_v2()
    here = unified_cgroup(Path("/proc/self/mounts").read_text(), Path("/proc/self/cgroup").read_text())
    if parent:
        assert not problems and set(parent) == set(CONTROLLERS)
        enabled = (next(iter(parent.values())) / "cgroup.subtree_control").read_text().split()
        assert set(CONTROLLERS) <= set(enabled)
    elif here is None:
        assert problems == ["no cgroup v2 hierarchy"]
    else:
        available = (here / "cgroup.controllers").read_text().split()
        missing = [c for c in CONTROLLERS if c not in available]
        assert len(problems) == 1
        if missing:
            assert "not delegated" in problems[0] and all(c in problems[0] for c in missing)
        else:
            assert "cannot make cgroup v2 children" in problems[0]


def test_v2_cgroup_kills_a_memory_hog_and_caps_processes(tmp_path: Path) -> None:
    parents, problems = _probe_cgroups_v2()
    if not parents:
        pytest.skip(f"memory and pids are not delegated to this process in cgroup v2 here: {problems}")
    cgroup = parents["memory"] / f"test-{os.getpid()}"
    cgroup.mkdir()
    try:
        (cgroup / "memory.max").write_text(str(64 * MiB))
        (cgroup / "memory.swap.max").write_text("0")
        (cgroup / "pids.max").write_text("4")

        def join() -> None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        hog = subprocess.run([sys.executable, "-c", "x = bytearray(256 * 2**20); x[::4096] = b'1' * len(x[::4096])"],
                             preexec_fn=join, capture_output=True)
        assert hog.returncode == -signal.SIGKILL
        events = dict(line.split() for line in (cgroup / "memory.events").read_text().splitlines())
        assert int(events["oom_kill"]) >= 1
        forks = subprocess.run([sys.executable, "-c", "import os\nn = 0\ntry:\n    while True:\n"
                                "        if os.fork() == 0:\n            import time; time.sleep(5); os._exit(0)\n"
                                "        n += 1\nexcept OSError:\n    print(n)\n"],
                               preexec_fn=join, capture_output=True, text=True, timeout=60)
        assert int(forks.stdout.strip()) < 4
        (cgroup / "cgroup.kill").write_text("1")
    finally:
        remove_cgroup(cgroup)
