"""`make lab` (`llmcourse lab`): JupyterLab with nbgrader's extensions starts offline on localhost and stops cleanly."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from llmcourse.grading import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_lab_starts_with_nbgrader_offline_and_stops(tmp_path: Path) -> None:
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = (tmp_path / "lab.log").open("w+")
    lab = subprocess.Popen([sys.executable, "-m", "llmcourse.cli", "lab", f"--port={port}",
                            f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"],
                           cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and lab.poll() is None:
            try:
                code, body = get(f"{base}/api/status?token={token}")
                if code == 200:
                    status = json.loads(body)
                    break
            except OSError:
                pass
            time.sleep(0.5)
        log.seek(0)
        assert status is not None, f"JupyterLab did not answer /api/status:\n{log.read()[-3000:]}"
        assert "started" in status
        # The learner's view opens on the exercises; the formgrader answers for instructors.
        assert get(f"{base}/lab/tree/exercises?token={token}")[0] == 200
        code, page = get(f"{base}/formgrader?token={token}")
        assert code == 200 and "formgrader" in page.lower()
        assert get(f"{base}/api/contents/exercises/ex02_attention?token={token}")[0] == 200
        # No news from the internet, no prompt asking to fetch it, and no update checks.
        code, lab_page = get(f"{base}/lab?token={token}")
        config = json.loads(lab_page.split('id="jupyter-config-data" type="application/json">', 1)[1].split("</script>", 1)[0])
        assert code == 200 and "@jupyterlab/apputils-extension:announcements" in config["disabledExtensions"]
        code, news = get(f"{base}/lab/api/news?token={token}")
        assert code in (200, 404) and (code == 404 or json.loads(news).get("news", []) == [])
        log.seek(0)
        text = log.read()
        for extension in ("formgrader", "assignment_list", "course_list", "validate_assignment"):
            assert f"nbgrader.server_extensions.{extension} | extension was successfully loaded" in text
        assert "Extension Manager is 'readonly'" in text
        assert str(REPO_ROOT) in text  # serves the repository, where nbgrader_config.py is
    finally:
        if lab.poll() is None:
            lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait()
        log.close()
    assert lab.returncode in (0, -signal.SIGTERM)
    with socket.socket() as s:  # nothing listens on the port any more (TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
