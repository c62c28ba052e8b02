"""A real `prospect serve` on a free port, and the REST/SSE calls the tests make to it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import ROOT


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


@dataclass
class LiveServer:
    home: Path
    port: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    any_port: bool = False  # True: another free port will do where this one was taken

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
                log = self.log_path.read_text()
                if self.any_port and "address already in use" in log.lower():
                    # free_port's port was taken before the server bound it (another
                    # process on this machine): take another one.
                    self.port = free_port()
                    return self.start(timeout)
                raise RuntimeError(f"server exited: {log[-2000:]}")
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

    def wait_step(self, job_id: int, step: int, timeout: float = 180) -> dict:
        """Poll the job until it has reported `step`; return it (it may be running still)."""
        t0 = time.monotonic()
        while (job := self.get(f"/api/jobs/{job_id}"))["step"] < step:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"job {job_id} never reached step {step}: {job}")
            time.sleep(0.1)
        return job


def make_server(home: Path, **extra_env: str) -> LiveServer:
    return LiveServer(home=home, port=free_port(), extra_env=extra_env, any_port=True)


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


# --- jobs and their event stream ---------------------------------------------------------------
FAST = {"max_steps": 8, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
        "learning_rate": 1e-4, "logging_steps": 1, "save_steps": 4, "max_length": 128}


def submit(server, name: str, **params) -> dict:
    """A torch KTO job on the demo model and dataset, FAST unless `params` say otherwise."""
    status, job = server.post("/api/jobs", {"name": name, "model": "tiny-demo",
                                            "dataset": "demo-kto",
                                            "params": {**FAST, **params}})
    assert status == 201, job
    return job


def sse_events(server, job_id: int, last_event_id: int | None = None) -> list[tuple]:
    """Read the job's SSE stream to its end: (id, event, data) triples."""
    req = urllib.request.Request(f"{server.url}/api/jobs/{job_id}/events")
    if last_event_id is not None:
        req.add_header("Last-Event-ID", str(last_event_id))
    out, cur = [], {}
    with urllib.request.urlopen(req, timeout=300) as resp:
        if resp.status == 204:
            return []
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in cur:
                    out.append((int(cur["id"]), cur["event"], json.loads(cur["data"])))
                cur = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                cur[key] = value
    return out


# --- datasets -----------------------------------------------------------------------------------
def upload(server, name: str, body: bytes, filename: str):
    """POST /api/datasets with the file's bytes as the body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", f"/api/datasets?name={name}&filename={filename}", body=body,
                 headers={"Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else None


def raw_get(server, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=120) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


FAKE_WORKER = ROOT / "tests" / "fake_worker.py"


def fake_python(folder: Path) -> Path:
    """An "interpreter" that runs tests/fake_worker.py whatever module it is asked for: a
    server given it as PROSPECT_PYTHON starts fake workers that emit protocol lines."""
    python = Path(folder) / "fake-python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_WORKER} \"$@\"\n")
    python.chmod(0o755)
    return python


@contextlib.contextmanager
def served_copy(demo_home: Path, root: Path, *, fake: bool = False, **extra_env: str):
    """A real server over a copy of the demo home in ``root`` (with fake workers if asked);
    its workers are killed and it is stopped afterwards."""
    import shutil

    home = Path(root) / "home"
    shutil.copytree(demo_home, home)
    if fake:
        extra_env = {"PROSPECT_PYTHON": str(fake_python(root)), **extra_env}
    server = make_server(home, **extra_env)
    server.start()
    try:
        yield server
    finally:
        kill_workers(server)
        server.stop()
