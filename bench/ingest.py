"""The server's CPU cost per ingested event, for the event rates a fast MLX step produces.

Writes 100 polls' worth of events (100 progress events and 10 metric events per poll, about
one second of a tiny model's MLX steps each) with the workers' own EventWriter, ingests them
with app.jobs.ingest after each poll, and prints CPU microseconds per event (process time, so
other load on the machine does not count).

    python bench/ingest.py [--polls 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlmodel import Session  # noqa: E402

from app.db import make_engine, migrate  # noqa: E402
from app.jobs.ingest import ingest  # noqa: E402
from app.models import Job  # noqa: E402
from contract.events import EventWriter  # noqa: E402


def run_once(polls: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="prospect-ingest-") as tmp:
        run_dir = Path(tmp)
        engine = make_engine(run_dir / "bench.db")
        migrate(engine)
        writer = EventWriter(run_dir / "events.jsonl")
        cpu, count = 0.0, 0
        with Session(engine) as session:
            job = Job(backend="mlx", method="sft", model="m", dataset="d", run_dir=str(run_dir))
            session.add(job)
            session.commit()
            session.refresh(job)
            for poll in range(polls):
                for i in range(100):
                    step = poll * 100 + i
                    writer.emit("progress", step=step, total_steps=polls * 100, epoch=0.5,
                                tokens_per_s=2500.0, eta_s=10.0)
                    if i % 10 == 0:
                        writer.emit("metric", step=step, values={
                            "loss": 1.5, "tokens_per_s": 2500.0, "learning_rate": 1e-5,
                            "peak_memory_gb": 0.1})
                t = time.process_time()
                count += len(ingest(session, job))
                cpu += time.process_time() - t
        engine.dispose()
    return cpu, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--polls", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    per_event = []
    for i in range(a.repeat):
        cpu, count = run_once(a.polls)
        per_event.append(cpu / count * 1e6)
        print(f"run {i + 1}: {count} events ingested in {cpu:.3f} s of CPU "
              f"({per_event[-1]:.1f} us/event)", flush=True)
    print(f"median CPU per ingested event: {statistics.median(per_event):.1f} us")


if __name__ == "__main__":
    main()
