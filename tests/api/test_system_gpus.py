"""/api/system and the system strip on a machine posing as one with two GPUs (nvidia-smi's
text handed in through app.state.probes): each GPU's memory used and the running jobs on it,
read from their launch plans (distributed) or their device (one process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from app.models import Job, JobStatus
from app.system.machine import Probes
from contract.launch_plan import LaunchPlan, write_launch_plan

# index, name, memory.total, memory.free, memory.used (MiB), as the server asks for them
SMI = ("0, NVIDIA H200, 143771, 100000, 43500\n"
       "1, NVIDIA H200, 143771, 143000, 500\n")
MiB = 1024**2


@pytest.fixture()
def two_gpus(app):
    app.state.probes = Probes(nvidia_smi=lambda: SMI, torch_cuda=lambda: "12.8",
                              has_module=lambda name: name == "torch")
    return app


def add_job(app, status, backend="torch", params=None, plan=None) -> int:
    with Session(app.state.engine) as s:
        job = Job(backend=backend, method="kto", model="tiny-demo", dataset="demo-kto",
                  params=params or {}, status=status)
        s.add(job)
        s.commit()
        run_dir = Path(app.state.settings.runs_dir) / str(job.id)
        run_dir.mkdir(parents=True)
        job.run_dir = str(run_dir)
        s.add(job)
        s.commit()
        if plan is not None:
            write_launch_plan(run_dir, plan)
        return job.id


def test_each_gpu_says_its_memory_and_jobs(two_gpus, client, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    app = two_gpus
    single = add_job(app, JobStatus.running)  # device auto: the first GPU
    both = add_job(app, JobStatus.starting, params={"num_processes": 2},
                   plan=LaunchPlan(launcher="accelerate", processes=2, gpu_ids=[0, 1]))
    add_job(app, JobStatus.running, params={"device": "cpu"})
    add_job(app, JobStatus.running, backend="mlx")
    add_job(app, JobStatus.queued)
    add_job(app, JobStatus.succeeded, params={"num_processes": 2},
            plan=LaunchPlan(launcher="accelerate", processes=2, gpu_ids=[0, 1]))
    info = client.get("/api/system").json()
    assert info["backends"]["cuda"]["devices"] == 2
    gpu0, gpu1 = info["cuda_devices"]
    assert gpu0 == {"index": 0, "name": "NVIDIA H200", "memory_total_bytes": 143771 * MiB,
                    "memory_free_bytes": 100000 * MiB, "memory_used_bytes": 43500 * MiB,
                    "in_use_by": sorted([single, both])}
    assert gpu1["memory_used_bytes"] == 500 * MiB and gpu1["in_use_by"] == [both]
    strip = client.get("/fragments/system").text
    assert 'data-testid="sys-gpu-1"' in strip
    assert "42.5 GiB of 140 GiB" in strip and strip.count(">NVIDIA H200<") == 1  # the name once
    assert f'<a href="/jobs/{both}">job {both}</a>' in strip


def test_single_job_follows_cuda_visible_devices(two_gpus, client, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    job = add_job(two_gpus, JobStatus.running, params={"device": "cuda"})
    gpus = client.get("/api/system").json()["cuda_devices"]
    assert [g["in_use_by"] for g in gpus] == [[], [job]]


def test_no_gpus_no_gpu_items(app, client):
    app.state.probes = Probes(nvidia_smi=lambda: None)
    add_job(app, JobStatus.running)
    assert client.get("/api/system").json()["cuda_devices"] == []
    assert "sys-gpu-" not in client.get("/fragments/system").text
