"""A job on several processes through the app: ``POST /api/plan`` and the form's plan panel
say "N processes × one" on this machine's CPU (app/planner/scale.py), and the memory
series carries a column per rank from the events' ``backend.ranks`` (app/jobs/series.py).
The app and client fixtures: tests/api/conftest.py."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from app.jobs.ingest import ingest
from app.models import Job
from contract.events import EventWriter
from contract.knobs import TORCH_KTO
from tests.api.test_tune_api import write_model
from tests.helpers.pages import HX, add_job, form_data

GiB = 2**30


def test_plan_for_processes_on_the_cpu_counts_each_process(client, tmp_path):
    model = write_model(tmp_path / "llama-tiny")
    body = {"model": model, "params": {"num_processes": 1}}
    one = client.post("/api/plan", json=body).json()
    body["params"]["num_processes"] = 3
    three = client.post("/api/plan", json=body).json()
    if one["device"] != "cpu":
        pytest.skip("a machine with a GPU plans per GPU (tests/unit/test_planner_scale.py)")
    est = three["estimate"]
    assert est["processes"] == 3 and est["per_gpu"] is False and est["sharding"] == "ddp"
    assert est["total_bytes"] == 3 * one["estimate"]["total_bytes"]
    assert est["per_process_bytes"] == int(one["estimate"]["total_bytes"])
    assert "(3 processes × " in three["message"]
    data = form_data(num_processes=3)
    data.update(model_choice="", model_text=model)
    html = client.post("/fragments/plan", data=data, headers=HX).text
    assert 'data-testid="plan-processes"' in html and "3 processes ×" in html
    assert "Each row is what one process holds" in html


def write_memory(app, tmp_path, events: list[dict]) -> Job:
    run_dir = tmp_path / "runs" / "scaled"
    run_dir.mkdir(parents=True)
    job = add_job(app, name="scaled", run_dir=str(run_dir),
                  params=TORCH_KTO.validate({"num_processes": 2}))
    writer = EventWriter(run_dir / "events.jsonl")  # what rank 0 writes
    writer.emit("status", phase="training", message="2 processes")
    for ev in events:
        writer.emit("memory", **ev)
    with Session(app.state.engine) as s:
        job = s.get(Job, job.id)
        ingest(s, job)
        s.expunge(job)
    return job


def sample(rss: float, ranks: list[tuple[int, float]] | None) -> dict:
    backend = {"name": "cuda", "active_bytes": ranks[0][1] if ranks else rss}
    if ranks is not None:
        backend["ranks"] = [{"rank": r, "host": "gpu-box", "active_bytes": a,
                             "peak_bytes": a * 1.5, "driver_bytes": a * 2} for r, a in ranks]
    return {"rss_bytes": int(rss), "backend": backend,
            "system": {"total": 64 * GiB, "available": 40 * GiB, "used": 24 * GiB}}


def test_memory_series_has_a_column_per_rank(app, client, tmp_path):
    job = write_memory(app, tmp_path, [
        sample(1 * GiB, [(0, 3 * GiB), (1, 4 * GiB)]),
        sample(1 * GiB, None),  # a sample before the gather (rank 0's own numbers only)
        sample(1.1 * GiB, [(1, 5 * GiB), (0, 3.5 * GiB)]),  # ranks in any order
    ])
    out = client.get(f"/api/jobs/{job.id}/series/memory").json()
    assert out["ranks"] == [{"rank": 0, "host": "gpu-box"}, {"rank": 1, "host": "gpu-box"}]
    assert out["rank0_active"] == [3 * GiB, None, 3.5 * GiB]
    assert out["rank1_active"] == [4 * GiB, None, 5 * GiB]
    # The old columns are unchanged.
    assert out["rss"] == [1 * GiB, 1 * GiB, int(1.1 * GiB)]
    assert out["backend_active"] == [3 * GiB, 1 * GiB, 5 * GiB]
    assert out["backend_name"] == "cuda" and len(out["elapsed_s"]) == 3


def test_memory_series_of_one_process_has_no_rank_columns(app, client, tmp_path):
    job = write_memory(app, tmp_path, [sample(1 * GiB, None), sample(2 * GiB, None)])
    out = client.get(f"/api/jobs/{job.id}/series/memory").json()
    assert out["ranks"] == [] and not any(k.startswith("rank") for k in out if k != "ranks")
    assert out["rss"] == [1 * GiB, 2 * GiB]


def test_malformed_ranks_are_skipped(app, client, tmp_path):
    bad = [sample(GiB, None) for _ in range(4)]
    bad[0]["backend"]["ranks"] = "rank zero"
    bad[1]["backend"]["ranks"] = [{"rank": True, "active_bytes": 1}, {"rank": -1},
                                  {"rank": "1", "active_bytes": 2}, 7]
    bad[2]["backend"]["ranks"] = {"rank": 0}
    bad[3]["backend"]["ranks"] = [{"rank": 2, "active_bytes": "lots"}]
    job = write_memory(app, tmp_path, bad)
    out = client.get(f"/api/jobs/{job.id}/series/memory").json()
    assert out["ranks"] == [{"rank": 2, "host": ""}]
    assert out["rank2_active"] == [None, None, None, None]


def test_downsampling_keeps_every_ranks_peak(app, client, tmp_path):
    events = [sample(GiB, [(0, 2 * GiB), (1, 2 * GiB + i)]) for i in range(300)]
    events[123] = sample(GiB, [(0, 2 * GiB), (1, 9 * GiB)])  # one rank's spike
    job = write_memory(app, tmp_path, events)
    out = client.get(f"/api/jobs/{job.id}/series/memory?max_points=40").json()
    assert len(out["seq"]) <= 40 and max(out["rank1_active"]) == 9 * GiB
