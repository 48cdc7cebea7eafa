"""Who is in the class: the instructor, the students, and their passwords (stored only as hashes).

``llmcourse class setup`` makes one password per person, writes them once to a file only the
instructor's administrator can read, to be handed out, and keeps salted scrypt hashes in
``roster.json``, which ``auth.RosterAuthenticator`` checks logins against.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

# A Unix account name that nbgrader can use as a student id: no '+' or '*', no upper case.
NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # about 50 ms a login: slow to guess, quick to check


def check_name(name: str) -> str:
    """``name`` if it is a usable account name, else a ValueError saying what is allowed."""
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} cannot be a class account: use lower-case letters, digits, '_' or '-', "
                         "starting with a letter, at most 31 characters")
    return name


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$<salt hex>$<hash hex>`` for ``password``."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    """Whether ``password`` hashes to ``stored`` (compared in constant time)."""
    try:
        kind, salt, _ = stored.split("$")
        expected = hash_password(password, bytes.fromhex(salt))
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(expected, stored)


@dataclass
class Roster:
    """The class: one instructor, the students, and each person's password hash."""

    instructor: str
    students: list[str]
    hashes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in [self.instructor, *self.students]:
            check_name(name)
        if self.instructor in self.students:
            raise ValueError(f"{self.instructor!r} cannot be both the instructor and a student")
        if len(set(self.students)) != len(self.students):
            raise ValueError("a student is listed twice")

    @property
    def people(self) -> list[str]:
        return [self.instructor, *self.students]

    def new_passwords(self) -> dict[str, str]:
        """A fresh random password for everyone who has none yet (kept as hashes); returns the new ones."""
        made = {}
        for name in self.people:
            if name not in self.hashes:
                made[name] = secrets.token_urlsafe(9)
                self.hashes[name] = hash_password(made[name])
        return made

    def check(self, name: str, password: str) -> bool:
        stored = self.hashes.get(name)
        return stored is not None and password_matches(password, stored)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"instructor": self.instructor, "students": self.students,
                                    "hashes": self.hashes}, indent=1))
        path.chmod(0o600)

    @classmethod
    def load(cls, path: Path) -> Roster:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no class roster at {path}: run `llmcourse class setup` first") from None
        return cls(data["instructor"], list(data["students"]), dict(data.get("hashes", {})))
