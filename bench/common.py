"""What the benchmarks share: a real `prospect serve` in a temporary home, driven over REST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
FINAL = ("succeeded", "failed", "cancelled", "interrupted")


def init_home(home: Path) -> dict[str, str]:
    """`prospect init` into ``home``: the demo model and dataset paths."""
    env = {**os.environ, "PROSPECT_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "app.cli", "init"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return {"model": str(home / "models" / "tiny-demo"),
            "dataset": str(home / "datasets" / "demo-kto.jsonl")}


class Server:
    """``with Server(home) as s: s.run_job({...})``; records start-up time and peak RSS."""

    def __init__(self, home: Path):
        self.home = home
        self.startup_s = 0.0
        self.peak_rss = 0

    def __enter__(self) -> Server:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{s.getsockname()[1]}"
        env = {**os.environ, "PROSPECT_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", self.url.rsplit(":", 1)[1],
             "--log-level", "warning"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                self.call("/api/jobs")
                break
            except OSError:
                if time.perf_counter() - t0 > 30:
                    raise SystemExit("the server did not start in 30 s") from None
                time.sleep(0.01)
        self.startup_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def call(self, path: str, body: dict | None = None) -> dict | list:
        req = urllib.request.Request(self.url + path, method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # the refusal's own words, not just its code
            raise SystemExit(f"{path}: HTTP {exc.code}: {exc.read().decode()[:2000]}") from None

    def run_job(self, job: dict) -> dict:
        """Submit, wait (sampling the server's RSS), return the finished job; fail loudly."""
        job = self.call("/api/jobs", job)
        proc = psutil.Process(self.proc.pid)
        while job["status"] not in FINAL or job["pid"] is not None:
            self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            time.sleep(1.0)  # the harness, not Prospect: poll lightly on 2 cores
            job = self.call(f"/api/jobs/{job['id']}")
        if job["status"] != "succeeded":
            raise SystemExit(f"the Prospect job ended {job['status']}: {job['error']}\n"
                             f"{job['log_tail']}")
        return job

    def metrics(self, job_id: int, names: str) -> dict:
        return self.call(f"/api/jobs/{job_id}/metrics?names={names}")
