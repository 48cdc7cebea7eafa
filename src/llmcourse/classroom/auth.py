"""JupyterHub's login for the class: the names and passwords of ``roster.json``, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyterhub.auth import Authenticator
from traitlets import Unicode

from .roster import Roster


class RosterAuthenticator(Authenticator):
    """Let in the people of the class roster with the password they were given.

    The roster is read at each login, so a student added with ``llmcourse class setup`` can log in
    without restarting the hub.
    """

    roster_file = Unicode(help="The class's roster.json.").tag(config=True)

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        name, password = data.get("username", "").strip().lower(), data.get("password", "")
        roster = Roster.load(Path(self.roster_file))
        if roster.check(name, password):
            return name
        self.log.warning("failed login for %r", name)
        return None
