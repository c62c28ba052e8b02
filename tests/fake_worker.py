"""A stand-in worker for supervisor tests: speaks the protocol, trains nothing.

Invoked as `fake_worker.py -m workers.torch --config <run_dir>/config.json`; FAKE_SCENARIO
picks what it does.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.protocol import EventWriter  # noqa: E402

config = json.loads(Path(sys.argv[sys.argv.index("--config") + 1]).read_text())
run_dir = Path(config["run_dir"])
events = EventWriter(run_dir / "events.jsonl")
scenario = os.environ.get("FAKE_SCENARIO", "succeed")
stop = False


def on_term(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, signal.SIG_IGN if scenario == "ignore_term" else on_term)
events.emit("status", phase="training", message=f"fake {scenario}")
print(f"fake worker starting; HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}", flush=True)
for step in range(1, 4 if scenario != "slow" and scenario != "ignore_term" else 10_000):
    events.emit("metric", step=step, values={"loss": 1.0 / step})
    events.emit("progress", step=step, total_steps=3, epoch=0.0, tokens_per_s=1.0, eta_s=1.0)
    if scenario == "crash" and step == 2:
        print("Traceback (most recent call last):\nRuntimeError: boom", flush=True)
        os._exit(3)
    if stop:
        ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        events.emit("checkpoint", step=step, path=str(ckpt))
        events.emit("done", status="cancelled", summary={"steps": step})
        sys.exit(0)
    time.sleep(0.05 if scenario == "succeed" else 0.2)
events.emit("artifact", kind="adapter", path=str(run_dir / "adapter"))
events.emit("done", status="succeeded", summary={"steps": 3})
