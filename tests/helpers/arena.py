"""Arena fixtures by hand: a finished KTO run with an adapter folder (and optionally its
held-out split), and what a generate worker leaves behind (answers.jsonl, the job
succeeded), for the API tier where no worker runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.models import Job, JobStatus
from contract.eval_split import write_split

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_run(session: Session, home: Path, model_path: Path, *, model: str = "tiny-demo",
                backend: str = "torch", split: list[dict[str, Any]] | None = None) -> Job:
    """A succeeded KTO run of ``model`` with an adapter on disk; ``split``: the held-out rows
    it recorded (``<run_dir>/eval_split.jsonl``)."""
    job = Job(name="kto-run", backend=backend, method="kto", model=model, dataset="demo-kto",
              params={}, status=JobStatus.succeeded, model_path=str(model_path))
    session.add(job)
    session.flush()
    run_dir = home / "runs" / f"{job.id:06d}"
    adapter = run_dir / "adapter"
    adapter.mkdir(parents=True)
    files = (("adapter_config.json", "adapters.safetensors") if backend == "mlx"
             else ADAPTER_FILES)
    for name in files:
        (adapter / name).write_text(json.dumps({"base_model_name_or_path": str(model_path)})
                                    if name.endswith(".json") else "x")
    if split:
        write_split(run_dir, split, list(range(len(split))))
    job.run_dir, job.adapter_path = str(run_dir), str(adapter)
    session.commit()
    session.refresh(job)
    return job


def answer_text(variant: str, index: int) -> str:
    return f"answer {variant.upper()} to prompt {index}"


def finish_generate(session: Session, job_id: int, *, skip: set[tuple[int, str]] = frozenset(),
                    torn: bool = False) -> Path:
    """What the generate worker documents: answers.jsonl in the run folder (all of A, then
    all of B), and the job succeeded. ``skip``: answers left out; ``torn``: a half line."""
    job = session.get(Job, job_id)
    count = sum(1 for line in Path(job.dataset_path).read_text().splitlines() if line.strip())
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"index": i, "variant": v, "text": answer_text(v, i),
                         "completion_tokens": 5, "finish_reason": "stop"})
             for v in ("a", "b") for i in range(count) if (i, v) not in skip]
    path = run_dir / "answers.jsonl"
    path.write_text("\n".join(lines) + "\n" + ('{"index": 9' if torn else ""))
    job.status = JobStatus.succeeded
    job.step = job.total_steps or 2 * count
    session.add(job)
    session.commit()
    return path


# --- on a live server (integration and browser tiers) -------------------------------------------
SPLIT_RUN = {"max_steps": 4, "logging_steps": 1, "save_steps": 4, "eval_fraction": 0.05,
             "eval_steps": 4, "gradient_accumulation_steps": 1, "max_length": 96,
             "learning_rate": 1e-4}


def split_run(server) -> dict:
    """A tiny torch KTO run on the demo that held 5 % of its rows out, succeeded."""
    status, job = server.post("/api/jobs", {"name": "arena run", "model": "tiny-demo",
                                            "dataset": "demo-kto", "params": SPLIT_RUN})
    assert status == 201, job
    job = server.wait_job(job["id"])
    assert job["status"] == "succeeded", job
    return job


def arena_on(server, run: dict, n: int = 4, max_tokens: int = 12) -> dict:
    """An arena of the run's adapter (A) against its base (B) on its held-out prompts, its
    generate job waited for."""
    status, arena = server.post("/api/arenas", {
        "variant_a": f"{run['model']}@job-{run['id']}", "variant_b": run["model"],
        "source": {"kind": "split", "job_id": run["id"]}, "n": n, "seed": 11,
        "max_tokens": max_tokens, "temperature": 0.7})
    assert status == 201, arena
    job = server.wait_job(arena["job_id"])
    assert job["status"] == "succeeded", job
    return arena
