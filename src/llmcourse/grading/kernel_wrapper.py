"""Start one grading kernel inside the sandbox that the grader prepared (run as a script).

The grading kernelspec's ``argv`` is::

    python -I -S .../kernel_wrapper.py PLAN.json {connection_file}

so jupyter_client starts this file, not ipykernel. It uses the standard library only (no
``llmcourse`` import, no site-packages: it starts in a few milliseconds) and:

1. joins the cgroups the grader created for this kernel (memory and pids; v1 or v2), if any;
2. sets the resource limits: address space, file size, no core dumps;
3. copies the connection file into the private socket folder (the only place, with the
   submission's working copy, that the sandbox sees of the grader's files);
4. starts ipykernel under bubblewrap (new user, pid, network, ipc, uts and cgroup namespaces,
   empty environment, read-only interpreter, private /tmp), or, where bubblewrap is not
   available, directly, with the same limits;
5. waits for it and exits with its status, so that the grader sees a dead kernel as one.

``PLAN.json`` is written by ``llmcourse.grading.sandbox`` before each kernel starts; its keys
are documented there (``KernelPlan``).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # In the child, before exec: SIGKILL when the wrapper goes, whatever the reason.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _join_cgroups(paths: list[str]) -> None:
    for path in paths:
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        except OSError as error:
            print(f"llmcourse sandbox: could not join {path}: {error}", file=sys.stderr)


def _set_limits(limits: dict[str, int]) -> None:
    names = {"address_space": resource.RLIMIT_AS, "file_size": resource.RLIMIT_FSIZE,
             "core": resource.RLIMIT_CORE, "open_files": resource.RLIMIT_NOFILE}
    for key, which in names.items():
        if key not in limits:
            continue
        value = int(limits[key])
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as error:
            print(f"llmcourse sandbox: could not set {key} limit: {error}", file=sys.stderr)


def main(argv: list[str]) -> int:
    """Run the kernel described by ``argv[0]`` (plan) with connection file ``argv[1]`` and options ``argv[2:]``."""
    if len(argv) < 2:
        print("usage: kernel_wrapper.py PLAN.json CONNECTION_FILE [KERNEL_OPTION...]", file=sys.stderr)
        return 2
    with open(argv[0]) as file:
        plan = json.load(file)
    _join_cgroups(plan.get("cgroups", []))
    _set_limits(plan.get("limits", {}))

    socket_dir = plan["socket_dir"]
    connection = os.path.join(socket_dir, "connection.json")
    shutil.copyfile(argv[1], connection)
    os.chmod(connection, 0o600)

    kernel = [*plan["kernel_argv"], "-f", connection, *argv[2:]]
    env = dict(plan["env"])
    if plan.get("bwrap"):
        # bwrap applies --clearenv and --setenv in order: the variables go after --clearenv.
        setenv = [arg for name, value in env.items() for arg in ("--setenv", name, value)]
        command = [plan["bwrap"], *plan["bwrap_args"], *setenv, "--", *kernel]
        child_env: dict[str, str] = {}
    else:
        command = kernel
        child_env = env
    # SIGINT and SIGTERM: the kernel is interrupted by message, and shut down through the grader.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The kernel's own stdout and stderr (not the notebook's outputs, which go over the sockets)
    # go to a log outside the sandbox, capped by the file size limit, not to the grader's terminal.
    with open(plan["log"], "wb") as log:
        child = subprocess.Popen(command, env=child_env, cwd=plan["workdir"], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                 close_fds=True)

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    status = child.wait()
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
