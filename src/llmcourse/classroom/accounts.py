"""Unix accounts for the people of a class, so that one student's files are closed to another.

Only accounts this module made carry its marker in their comment field (GECOS); an account of
the same name that exists already and lacks it is never reused or removed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

MARKER = "llmcourse class account"


def why_no_accounts() -> str | None:
    """None where this process can create Unix accounts and run servers as them; else the reason."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root: students cannot be made separate Unix users (run `make class` as root)"
    missing = [tool for tool in ("useradd", "userdel") if shutil.which(tool) is None]
    if missing:
        return f"no {' or '.join(missing)} on this machine"
    return None


def ensure_account(name: str) -> pwd.struct_passwd:
    """The class account ``name``, made if missing, its home open to its owner only (mode 700)."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--comment", MARKER, name],
                       check=True, capture_output=True, text=True)
        account = pwd.getpwnam(name)
    else:
        if account.pw_gecos != MARKER:
            raise ValueError(f"the account {name!r} exists on this machine and was not made for the class: "
                             "choose another name")
    Path(account.pw_dir).chmod(0o700)
    return account


def remove_account(name: str) -> bool:
    """Remove ``name`` and its home if this module made it; return whether it did."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return False
    if account.pw_gecos != MARKER:
        return False
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
    return True


def as_user(name: str) -> list[str]:
    """The command prefix that runs a program as ``name`` (``runuser``, else ``setpriv``), for a root process."""
    runuser = shutil.which("runuser") or next((p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None)
    if runuser:
        return [runuser, "-u", name, "--"]
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={name}", f"--regid={pwd.getpwnam(name).pw_gid}", "--init-groups", "--"]


def give(path: Path, name: str, mode: int) -> None:
    """Make ``path`` and everything under it ``name``'s, with ``mode`` on ``path`` itself."""
    account = pwd.getpwnam(name)
    for folder, dirs, files in os.walk(path):
        for entry in [folder, *(os.path.join(folder, f) for f in dirs + files)]:
            os.chown(entry, account.pw_uid, account.pw_gid, follow_symlinks=False)
    path.chmod(mode)
