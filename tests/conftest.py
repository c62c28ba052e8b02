"""Shared fixtures: a demo home built once, and a real server on a free port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PROSPECT_HOME": str(home), "PROSPECT_POLL_INTERVAL_S": "0.2",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PROSPECT_API_TOKEN", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A PROSPECT_HOME after `prospect init` (demo model and dataset built), made once."""
    home = tmp_path_factory.mktemp("prospect-home")
    subprocess.run([sys.executable, "-m", "app.cli", "init"], cwd=ROOT, env=server_env(home),
                   check=True, capture_output=True, timeout=600)
    return home


@dataclass
class LiveServer:
    home: Path
    port: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> float:
        """Start `prospect serve`; return seconds until the first answered request."""
        self.log_path = self.home / f"server-{self.port}.log"
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
             "--log-level", "warning"],
            cwd=ROOT, env=server_env(self.home, **self.extra_env),
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                self.get("/api/jobs")
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not answer in {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method: str, path: str, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def get(self, path: str):
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body=None):
        return self.request("POST", path, body)

    def wait_job(self, job_id: int, statuses=("succeeded", "failed", "cancelled",
                                              "interrupted"), timeout: float = 300) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            job = self.get(f"/api/jobs/{job_id}")
            if job["status"] in statuses and job["pid"] is None:  # and its process is gone
                return job
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s: {job}")


def make_server(home: Path, **extra_env: str) -> LiveServer:
    return LiveServer(home=home, port=free_port(), extra_env=extra_env)


@pytest.fixture(scope="session")
def live_server(demo_home, tmp_path_factory):
    """A real `prospect serve` on a free port, over a copy of the demo home."""
    home = tmp_path_factory.mktemp("live-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    server = make_server(home)
    server.start()
    yield server
    kill_workers(server)
    server.stop()


def kill_workers(server: LiveServer) -> None:
    """Workers outlive the server by design; a test session must not leave any behind."""
    try:
        jobs = server.get("/api/jobs?limit=1000")
    except Exception:
        return
    for job in jobs:
        if job.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one per test module (tests/chromium.py)."""
    from tests.chromium import launch

    yield from launch()
