"""A stand-in worker for supervisor tests: speaks the protocol, trains nothing.

Invoked as `fake_worker.py -m workers.torch --config <run_dir>/config.json`; the job's
params["scenario"], else FAKE_SCENARIO, picks what it does: succeed, slow, ignore_term, crash
(exits 3 at step 2), oom (reports out of memory and fails), hang (goes silent at step 2 and
ignores SIGTERM), stall (at step 2 only its memory reports go on; ignores SIGTERM).
With tune "auto" and the server's tune_plan.json it "tunes" as the real workers do
(workers/tune.py): every candidate and the baseline get a made-up speed (the first candidate
fastest), the choice goes to tune.json and one `tune` event (FAKE_TUNE_DELAY_S seconds after
the worker's first status, 0 by default); a saved tune.json is reused.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from contract.events import EventWriter  # noqa: E402
from contract.tune import Trial, TuneResult, read_plan, read_result, write_result  # noqa: E402

config = json.loads(Path(sys.argv[sys.argv.index("--config") + 1]).read_text())
run_dir = Path(config["run_dir"])
events = EventWriter(run_dir / "events.jsonl")
scenario = config.get("params", {}).get("scenario") or os.environ.get("FAKE_SCENARIO", "succeed")
stop = False


def on_term(signum, frame):
    global stop
    stop = True


deaf = scenario in ("ignore_term", "hang", "stall")
signal.signal(signal.SIGTERM, signal.SIG_IGN if deaf else on_term)
events.emit("status", phase="training", message=f"fake {scenario}")
print(f"fake worker starting; HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}", flush=True)
plan = read_plan(run_dir) if config.get("params", {}).get("tune") == "auto" else None
if plan is not None and read_result(run_dir) is None and plan.candidates:
    time.sleep(float(os.environ.get("FAKE_TUNE_DELAY_S") or 0))  # "timing" the candidates
    tried = [Trial(c.settings, "ok", samples_per_s=40.0 / (i + 1), peak_bytes=c.estimate_bytes,
                   seconds=0.1) for i, c in enumerate(plan.candidates)]
    if plan.baseline and plan.baseline not in [t.settings for t in tried]:
        tried.append(Trial(plan.baseline, "ok", samples_per_s=5.0, peak_bytes=2**30, seconds=0.1))
    base = next((t.samples_per_s for t in tried if t.settings == plan.baseline), None)
    result = TuneResult(chosen=dict(tried[0].settings), tried=tried, baseline_samples_per_s=base,
                        probe_s=0.5)
    result.message = (f"tried {len(tried)} settings; chose {plan.candidates[0].label}: "
                      f"{40.0 / base if base else 0:.1f}× the seed defaults")
    write_result(run_dir, result)
    events.emit("tune", **result.event_fields())
elif plan is not None:
    events.emit("status", phase="tuning", message="reusing the tuned settings")
for step in range(1, 4 if scenario not in ("slow", "ignore_term") else 10_000):
    events.emit("metric", step=step, values={"loss": 1.0 / step})
    events.emit("progress", step=step, total_steps=3, epoch=0.0, tokens_per_s=1.0, eta_s=1.0)
    if scenario == "crash" and step == 2:
        print("Traceback (most recent call last):\nRuntimeError: boom", flush=True)
        os._exit(3)
    if scenario == "oom" and step == 2:
        from workers.torch.errors import describe_error

        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
        events.emit("error", **describe_error(RuntimeError("CUDA out of memory. Tried to "
                                                           "allocate 2.00 GiB")))
        events.emit("done", status="failed", summary={})
        sys.exit(1)
    if scenario in ("hang", "stall") and step == 2:
        print("stuck in a collective that never returns", flush=True)
        while True:
            if scenario == "stall":  # the memory thread is alive; the training loop is not
                events.emit("memory", rss_bytes=1)
            time.sleep(0.2)
    if stop:
        ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        events.emit("checkpoint", step=step, path=str(ckpt))
        events.emit("done", status="cancelled", summary={"steps": step})
        sys.exit(0)
    time.sleep(0.05 if scenario == "succeed" else 0.2)
events.emit("artifact", kind="adapter", path=str(run_dir / "adapter"))
events.emit("done", status="succeeded", summary={"steps": 3})
