"""The API token never leaves the server: not in a log, an event, a worker's config or
environment dump, nor the database; the real server and a (fake) worker."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.data import write_assets
from tests.helpers.server import make_server, server_env
from tests.helpers.workers import FAKE


def job(**over) -> dict:
    return {"backend": "torch", "method": "kto", "model": "m", "dataset": "d",
            "params": {"max_steps": 1}, **over}


# --- the token never leaves the server --------------------------------------------------------
def test_the_api_token_appears_in_no_log_event_config_or_database(tmp_path):
    token = "tok-" + "Zq9" * 12
    home = tmp_path / "home"
    model, data = write_assets(home)
    python = tmp_path / "fake-python"  # dumps the whole environment it got into worker.log
    python.write_text(f"#!/bin/sh\nenv\nexec {sys.executable} {FAKE} \"$@\"\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    server = make_server(home, PROSPECT_API_TOKEN=token, PROSPECT_PYTHON=str(python))
    auth = {"Authorization": f"Bearer {token}"}
    start(server, auth)
    try:
        assert server.request("GET", "/api/jobs")[0] == 401
        server.request("GET", f"/?token={token}&x=1")  # 303 + cookie (urllib drops it)
        status, body = server.request("POST", "/api/jobs", job(model=str(model), dataset=str(
            data), name=f"named {token[:8]}"), headers=auth)
        assert status == 201, body
        done = wait(server, body["id"], auth)
        assert done["status"] == "succeeded", done
        run_dir = Path(done["run_dir"])
        worker_log = (run_dir / "worker.log").read_text()
        assert "PROSPECT_HOME=" in worker_log  # the env dump is there, without the token
        if sys.platform == "linux":  # set before the interpreter starts (contract/launch_env.py)
            assert "MALLOC_MMAP_THRESHOLD_=1048576" in worker_log
        server.stop()
        logs = list(home.glob("server-*.log"))
        assert "GET /?token=redacted&x=1" in logs[0].read_text()  # the access log is on
        places = [*logs, run_dir / "worker.log", run_dir / "events.jsonl", run_dir / "config.json",
                  *home.glob("prospect.db*")]
        for place in places:
            assert token.encode() not in place.read_bytes(), place
    finally:
        server.stop()


def start(server, auth: dict, timeout: float = 30) -> None:
    """LiveServer.start with the access log on (as `prospect serve` runs) and the token."""
    server.log_path = server.home / f"server-{server.port}.log"
    server.proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(server.port), "--log-level",
         "info"], cwd=ROOT, env=server_env(server.home, **server.extra_env),
        stdout=open(server.log_path, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if server.request("GET", "/api/jobs", headers=auth)[0] == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("server did not start")


def wait(server, job_id: int, auth: dict, timeout: float = 30) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        status, body = server.request("GET", f"/api/jobs/{job_id}", headers=auth)
        if body["status"] in ("succeeded", "failed") and body["pid"] is None:
            return body
        time.sleep(0.2)
    raise TimeoutError(body)
