"""Load on loopback: live pages (SSE) and polling scripts while a job streams events.

Starts a real `prospect serve` on 127.0.0.1 over a fresh home, submits one job whose worker
is this file (it writes protocol events quickly and trains nothing), and meanwhile holds
`--clients` SSE connections to the job's event stream and `--pollers` scripts polling
GET /api/jobs/{id} and GET /api/jobs/{id}/metrics. Then checks that every SSE client got seqs
1..N exactly once and in order (N = the job's last seq, equal to the lines of events.jsonl),
that no request failed and that the server log has no "database is locked"; prints p50/p95 of
the polls as one JSON object.

    python bench/load.py                         # 20 clients, 4 pollers, 3000 events
    python bench/load.py --clients 50 --events 10000 --rate 1000
    python bench/load.py --real                  # a real torch KTO job on the tiny demo
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKED = "database is locked"
REAL_PARAMS = {"max_steps": 60, "logging_steps": 1, "gradient_accumulation_steps": 1,
               "per_device_train_batch_size": 2, "max_length": 128, "save_steps": 20,
               "device": "cpu"}


# --- the worker side: `python bench/load.py -m workers.torch --config run_dir/config.json` ---
def fake_worker(config_path: str) -> None:
    """Emits LOAD_EVENTS events (metric and progress, one status, one done) at LOAD_RATE/s."""
    sys.path.insert(0, str(ROOT))
    from contract.events import EventWriter

    config = json.loads(Path(config_path).read_text())
    events = EventWriter(Path(config["run_dir"]) / "events.jsonl")
    total, rate = int(os.environ.get("LOAD_EVENTS", 3000)), float(os.environ.get("LOAD_RATE",
                                                                                     500))
    events.emit("status", phase="training", message="load-test worker")
    steps = max(1, (total - 2) // 2)
    t0 = time.monotonic()
    for step in range(1, steps + 1):
        events.emit("metric", step=step, values={"loss": 1.0 / step, "kl": 0.01 * step})
        events.emit("progress", step=step, total_steps=steps, epoch=step / steps,
                    tokens_per_s=1000.0, eta_s=(steps - step) * 2 / rate)
        ahead = t0 + step * 2 / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    events.emit("done", status="succeeded", summary={"steps": steps})


# --- the client side ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body=None) -> tuple[int, object, float]:
    """One request on a fresh connection (as a script would); (status, json, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    elapsed = time.perf_counter() - t0
    conn.close()
    return resp.status, json.loads(raw) if raw else None, elapsed


class SSEClient(threading.Thread):
    """Reads the job's stream as EventSource does: reconnects with Last-Event-ID until the
    server answers 204 (the job finished and nothing is left)."""

    def __init__(self, port: int, job_id: int, deadline: float):
        super().__init__(daemon=True)
        self.port, self.job_id, self.deadline = port, job_id, deadline
        self.seqs: list[int] = []
        self.bad_data: list[str] = []
        self.connects = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                if self._once():
                    return
            self.error = "deadline passed"
        except Exception as exc:  # reported, not raised: the main thread checks
            self.error = f"{type(exc).__name__}: {exc}"

    def _once(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Accept": "text/event-stream"}
        if self.seqs:
            headers["Last-Event-ID"] = str(self.seqs[-1])
        conn.request("GET", f"/api/jobs/{self.job_id}/events", headers=headers)
        resp = conn.getresponse()
        self.connects += 1
        if resp.status == 204:
            conn.close()
            return True
        if resp.status != 200:
            raise RuntimeError(f"stream answered {resp.status}")
        event_id = None
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                if json.loads(line[6:]).get("seq") != event_id:
                    self.bad_data.append(line[:200])
                self.seqs.append(event_id)
        conn.close()
        return False


class Poller(threading.Thread):
    def __init__(self, port: int, job_id: int, stop: threading.Event, interval: float):
        super().__init__(daemon=True)
        self.port, self.job_id, self.stop, self.interval = port, job_id, stop, interval
        self.latency: dict[str, list[float]] = {"job": [], "metrics": []}
        self.failures: list[str] = []

    def run(self) -> None:
        paths = {"job": f"/api/jobs/{self.job_id}",
                 "metrics": f"/api/jobs/{self.job_id}/metrics?max_points=500"}
        while not self.stop.is_set():
            for kind, path in paths.items():
                try:
                    status, _, seconds = call(self.port, "GET", path)
                except Exception as exc:
                    self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                    continue
                if status != 200:
                    self.failures.append(f"{path}: {status}")
                self.latency[kind].append(seconds)
            self.stop.wait(self.interval)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def make_home(home: Path) -> tuple[Path, Path, Path]:
    model = home / "models" / "load-model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    data = home / "datasets" / "load.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}",
                                        "label": i % 2 == 0}) + "\n" for i in range(8)))
    python = home / "load-python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    python.chmod(0o755)
    return model, data, python


def run_load(home: Path, clients: int = 20, pollers: int = 4, events: int = 3000,
             rate: float = 500, poll_interval: float = 0.05, timeout: float = 120,
             real: bool = False) -> dict:
    """`real`: a real torch KTO job on the offline demo model (built here by `prospect
    init`) instead of the fast fake worker."""
    model, data, python = make_home(home)
    port = free_port()
    log_path = home / "server.log"
    env = {**os.environ, "PROSPECT_HOME": str(home), "PROSPECT_POLL_INTERVAL_S": "0.1",
           "LOAD_EVENTS": str(events), "LOAD_RATE": str(rate), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PROSPECT_API_TOKEN", None)
    body = {"name": "load", "model": str(model), "dataset": str(data),
            "params": {"max_steps": 1}}
    if real:
        subprocess.run([sys.executable, "-m", "app.cli", "init"], cwd=ROOT, env=env,
                       check=True, capture_output=True, timeout=600)
        body = {"name": "load-real", "model": "tiny-demo", "dataset": "demo-kto",
                "params": REAL_PARAMS}
    else:
        env["PROSPECT_PYTHON"] = str(python)
    with open(log_path, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host",
                                   "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while True:
            try:
                call(port, "GET", "/api/jobs")
                break
            except OSError:
                if time.monotonic() - t0 > 30 or server.poll() is not None:
                    raise RuntimeError(log_path.read_text()[-2000:]) from None
                time.sleep(0.05)
        status, job, _ = call(port, "POST", "/api/jobs", body)
        assert status == 201, job
        deadline = time.monotonic() + timeout
        stop = threading.Event()
        streams = [SSEClient(port, job["id"], deadline) for _ in range(clients)]
        polls = [Poller(port, job["id"], stop, poll_interval) for _ in range(pollers)]
        started = time.monotonic()
        for t in (*streams, *polls):
            t.start()
        for t in streams:
            t.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - started
        stop.set()
        for t in polls:
            t.join(30)
        final = call(port, "GET", f"/api/jobs/{job['id']}")[1]
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    lines = (Path(final["run_dir"]) / "events.jsonl").read_text().splitlines()
    n = final["last_seq"]
    expected = list(range(1, n + 1))
    latency = {k: [s for p in polls for s in p.latency[k]] for k in ("job", "metrics")}
    log_text = log_path.read_text()
    result = {
        "clients": clients, "pollers": pollers, "events": n, "file_lines": len(lines),
        "status": final["status"], "seconds": round(elapsed, 2),
        "clients_exact": sum(s.seqs == expected for s in streams),
        "clients_lost": sum(len(set(expected) - set(s.seqs)) > 0 for s in streams),
        "clients_duplicated": sum(len(s.seqs) != len(set(s.seqs)) for s in streams),
        "client_errors": [s.error for s in streams if s.error] +
                         [b for s in streams for b in s.bad_data][:5],
        "reconnects": sum(s.connects - 2 for s in streams),  # one stream + the final 204
        "polls": sum(len(v) for v in latency.values()),
        "poll_failures": [f for p in polls for f in p.failures][:5],
        "database_locked": log_text.count(LOCKED),
        "server_errors": log_text.count("Traceback"),
    }
    for kind, values in latency.items():
        result[f"{kind}_p50_ms"] = round(percentile(values, 50) * 1000, 1)
        result[f"{kind}_p95_ms"] = round(percentile(values, 95) * 1000, 1)
        result[f"{kind}_max_ms"] = round(max(values, default=float("nan")) * 1000, 1)
    return result


def main() -> int:
    if "--config" in sys.argv:  # started by the supervisor as the job's worker
        fake_worker(sys.argv[sys.argv.index("--config") + 1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=500, help="events per second")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--real", action="store_true", help="train the tiny demo model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prospect-load-") as tmp:
        result = run_load(Path(tmp), args.clients, args.pollers, args.events, args.rate,
                          timeout=args.timeout, real=args.real)
    print(json.dumps(result, indent=2))
    ok = (result["clients_exact"] == args.clients and not result["database_locked"]
          and not result["poll_failures"] and result["status"] == "succeeded")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
