"""Does a 100,000-step run stay smooth on the job page?

Puts a finished job with 100,000 steps x 8 metrics (800,000 metric rows) and a memory
sample every 2 s of a 28-hour run (50,000 memory events) into a fresh home's SQLite, starts
a real `prospect serve`, and measures:

1. server: GET /api/jobs/{id}/metrics?max_points=N (the peak-keeping downsampling in
   app/jobs/metrics.py) and GET /api/jobs/{id}/series/memory?max_points=N, median of a few calls;
2. browser (headless Chromium): the job page's load until every chart has drawn, and
   ``performance.now()`` around uPlot's ``setData`` for the loss chart with the downsampled
   points, and with all 100,000 points for comparison.

Run: .venv/bin/python bench/dashboard.py [--steps 100000] [--max-points 4000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
NAMES = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
         "learning_rate", "grad_norm", "logps/chosen")
# What templates/job.html's charts draw (static/js/job.js asks for these names only).
CHARTED = ("loss", "eval_loss", "val_loss", "rewards/chosen", "rewards/rejected",
           "rewards/margins", "kl", "learning_rate")


def fill_db(home: Path, steps: int, memory_samples: int) -> int:
    """One succeeded job with ``steps`` x 8 metrics and ``memory_samples`` memory events."""
    from sqlalchemy import insert

    from app.db import make_engine, migrate
    from app.models import Event, Job, JobStatus, Metric, utcnow

    engine = make_engine(home / "prospect.db")
    migrate(engine)
    rnd = random.Random(0)
    with engine.begin() as conn:
        job_id = conn.execute(insert(Job).values(
            name=f"long run ({steps:,} steps)", backend="torch", method="kto",
            model="tiny-demo", dataset="demo-kto", params={"max_steps": steps},
            status=JobStatus.succeeded, step=steps, total_steps=steps, run_dir="",
            created_at=utcnow(),
            model_path="", dataset_path="", events_offset=0, last_seq=0, notes="", tags=[],
        )).inserted_primary_key[0]
        rows, seq = [], 0
        for step in range(1, steps + 1):
            seq += 1
            decay = math.exp(-step / (steps / 4))
            values = {"loss": 0.5 * decay + 0.05 + rnd.gauss(0, 0.02),
                      "kl": abs(rnd.gauss(0.1, 0.05)), "rewards/chosen": 1 - decay,
                      "rewards/rejected": decay - 1, "rewards/margins": 2 * (1 - decay),
                      "learning_rate": 5e-7 * (1 - step / steps), "grad_norm": abs(
                          rnd.gauss(1, 0.3)) + (25 if step == steps // 3 else 0),
                      "logps/chosen": -100 * decay}
            rows += [{"job_id": job_id, "seq": seq, "step": step, "name": k, "value": v}
                     for k, v in values.items()]
            if len(rows) >= 80_000:
                conn.execute(insert(Metric), rows)
                rows = []
        if rows:
            conn.execute(insert(Metric), rows)
        gib = 1024**3
        events = []
        for i in range(memory_samples):
            seq += 1
            events.append({"job_id": job_id, "seq": seq, "t": 1_700_000_000 + 2.0 * i,
                           "type": "memory", "data": {
                               "rss_bytes": int((6 + rnd.random()) * gib),
                               "system": {"total": 24 * gib, "available": 6 * gib,
                                          "used": 18 * gib, "swap_used": gib},
                               "backend": {"name": "mps", "active_bytes": 9 * gib,
                                           "peak_bytes": 10 * gib, "driver_bytes": 11 * gib}}})
        conn.execute(insert(Event), events)
        conn.execute(Job.__table__.update().where(Job.__table__.c.id == job_id)
                     .values(last_seq=seq))
    engine.dispose()
    return job_id


def timed_get(server: Server, path: str, repeat: int) -> tuple[float, int, dict]:
    import urllib.request

    times, size, body = [], 0, {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        with urllib.request.urlopen(server.url + path, timeout=300) as resp:
            raw = resp.read()
        times.append(time.perf_counter() - t0)
        size, body = len(raw), json.loads(raw)
    return statistics.median(times), size, body


def browser_times(server: Server, job_id: int, steps: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        t0 = time.perf_counter()
        page.goto(f"{server.url}/jobs/{job_id}")
        while not page.evaluate("(() => { const c = window.prospectJob && "
                                "window.prospectJob.charts; return !!(c && c.loss.plot && "
                                "c.mem.plot && c.lr.plot); })()"):
            time.sleep(0.02)
        load_s = time.perf_counter() - t0
        # setData with the points the page holds (downsampled by the server), 5 runs.
        # uPlot draws in a microtask after setData returns: awaiting one more microtask
        # puts the clock after the draw.
        down = page.evaluate("""async () => { const c = window.prospectJob.charts.loss;
            const d = c.data(); const out = [];
            for (let i = 0; i < 5; i++) { const t = performance.now(); c.plot.setData(d);
              await Promise.resolve(); out.push(performance.now() - t); }
            out.sort((a, b) => a - b); return [out[2], d[0].length]; }""")
        full = page.evaluate(f"""async () => {{ const c = window.prospectJob.charts.loss;
            const n = {steps}; const x = new Array(n), ys = c.names.map(() => new Array(n));
            for (let i = 0; i < n; i++) {{ x[i] = i + 1;
              ys.forEach((y, j) => {{ y[i] = 0.5 * Math.exp(-i / (n / 4)) + 0.01 * j; }}); }}
            const d = [x].concat(ys); const out = [];
            for (let i = 0; i < 5; i++) {{ const t = performance.now(); c.plot.setData(d);
              await Promise.resolve(); out.push(performance.now() - t); }}
            out.sort((a, b) => a - b); return out[2]; }}""")
        browser.close()
    return {"load_s": load_s, "set_data_ms": down[0], "points": down[1],
            "set_data_full_ms": full}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--memory-samples", type=int, default=50_000)
    ap.add_argument("--max-points", type=int, default=4000, help="what the job page asks for")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="prospect-dash-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        job_id = fill_db(home, args.steps, args.memory_samples)
        print(f"filled the database: {args.steps:,} steps x {len(NAMES)} metrics + "
              f"{args.memory_samples:,} memory events in {time.perf_counter() - t0:.1f} s")
        with Server(home) as server:
            q = f"/api/jobs/{job_id}"
            s, size, body = timed_get(server, f"{q}/metrics?max_points={args.max_points}",
                                      args.repeat)
            spike = max(v for v in body["grad_norm"] if v is not None)
            print(f"server  metrics  max_points={args.max_points}: {s * 1000:7.0f} ms  "
                  f"{len(body['step']):,} steps kept, {size / 1024:,.0f} KiB, grad_norm "
                  f"spike kept: {spike > 20}")
            s, size, body = timed_get(server, f"{q}/metrics?max_points={args.max_points}"
                                      f"&names={','.join(CHARTED)}", args.repeat)
            print(f"server  metrics  the names the charts draw ({len(CHARTED)}):       "
                  f"{s * 1000:7.0f} ms  {len(body['step']):,} steps kept, "
                  f"{size / 1024:,.0f} KiB")
            s, size, body = timed_get(server, f"{q}/series/memory?max_points={args.max_points}",
                                      args.repeat)
            print(f"server  memory   max_points={args.max_points}: {s * 1000:7.0f} ms  "
                  f"{len(body['seq']):,} samples kept, {size / 1024:,.0f} KiB")
            s, size, body = timed_get(server, f"{q}/metrics", 1)
            print(f"server  metrics  all points          : {s * 1000:7.0f} ms  "
                  f"{len(body['step']):,} steps, {size / 1024:,.0f} KiB (not what the page asks)")
            b = browser_times(server, job_id, args.steps)
        print(f"browser job page load until all charts drew: {b['load_s'] * 1000:7.0f} ms")
        print(f"browser uPlot setData, loss chart, {b['points']:,} points: "
              f"{b['set_data_ms']:6.1f} ms")
        print(f"browser uPlot setData, loss chart, {args.steps:,} points (no downsampling): "
              f"{b['set_data_full_ms']:6.1f} ms")


if __name__ == "__main__":
    main()
