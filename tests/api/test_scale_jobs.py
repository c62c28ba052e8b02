"""The scale knobs at submission and at a resume (app/jobs/scale_checks.py): a job whose
processes cannot start on this machine is a 422 naming the knob and the fix, and a resume may
change the scale knobs alone. TestClient, no lifespan: no supervisor, no worker."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from app.errors import JobInputError
from app.jobs.launching import cuda_gpus
from app.jobs.scale_checks import torch_scale_problem
from app.models import Job, JobStatus
from contract.knobs import TORCH_KTO
from tests.api.test_job_actions import status_of, with_run_dir

GPUS = [{"index": 0, "name": "H200", "memory_total_bytes": 1, "memory_free_bytes": 1},
        {"index": 1, "name": "H200", "memory_total_bytes": 1, "memory_free_bytes": 1}]
NO_GPU_HERE = pytest.mark.skipif(bool(cuda_gpus()), reason="this machine has a CUDA GPU")


def submit(client, backend="torch", **params):
    return client.post("/api/jobs", json={"model": "tiny-demo", "dataset": "demo-kto",
                                          "backend": backend, "params": params})


def refused(r, field: str) -> str:
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["field"] == field, detail
    return detail["msg"]


@pytest.mark.parametrize("params,field,words", [
    ({"num_processes": 2, "device": "mps"}, "params.num_processes",
     "several processes need CUDA GPUs"),
    ({"num_processes": 3}, "params.num_processes", "this machine has 2 (GPUs 0, 1): set "
                                                   "num_processes to 2 or fewer"),
    ({"num_processes": 2, "gpu_ids": "1,4"}, "params.gpu_ids", "GPU 4 does not exist here: "
                                                               "this machine has GPUs 0, 1"),
    ({"num_processes": 2, "device": "cpu", "gpu_ids": "0,1"}, "params.gpu_ids",
     "device is cpu"),
])
def test_torch_scale_against_two_gpus(params, field, words):
    problem = torch_scale_problem({**TORCH_KTO.defaults(), **params}, GPUS)
    assert problem is not None and problem.field == field
    assert words in problem.message, problem.message


def test_torch_scale_that_fits_the_machine():
    defaults = TORCH_KTO.defaults()
    assert torch_scale_problem({**defaults, "num_processes": 2}, GPUS) is None
    assert torch_scale_problem({**defaults, "num_processes": 1, "gpu_ids": "1"}, GPUS) is None
    assert torch_scale_problem({**defaults, "num_processes": 2, "device": "cpu"}, []) is None
    problem = torch_scale_problem({**defaults, "num_processes": 2}, [])
    assert problem.message == ("this machine has no CUDA GPU (nvidia-smi lists none): set "
                               "device to cpu to run 2 processes on the CPU, or "
                               "num_processes to 1")


def test_submit_refuses_processes_on_mps(client):
    msg = refused(submit(client, num_processes=2, device="mps"), "params.num_processes")
    assert "set num_processes to 1, or device to cpu to run 2 processes on the CPU" in msg


@NO_GPU_HERE
def test_submit_without_a_gpu_names_device_cpu(client):
    msg = refused(submit(client, num_processes=2), "params.num_processes")
    assert "set device to cpu to run 2 processes on the CPU, or num_processes to 1" in msg
    msg = refused(submit(client, num_processes=2, gpu_ids="0,1", device="cuda"),
                  "params.gpu_ids")
    assert "no CUDA GPU" in msg and "leave gpu_ids empty" in msg
    r = submit(client, num_processes=2, device="cpu")
    assert r.status_code == 201, r.text
    assert r.json()["params"]["num_processes"] == 2


def test_submit_mlx_with_unknown_hosts(client):
    msg = refused(submit(client, backend="mlx", hosts="here,studio"), "params.hosts")
    assert "unknown host here" in msg and "PUT /api/settings/hosts" in msg


# --- resume ------------------------------------------------------------------------------------
def stopped_job(app, tmp_path, **params) -> Job:
    return with_run_dir(app, tmp_path, JobStatus.cancelled, checkpoint=True,
                        params={**TORCH_KTO.defaults(), "device": "cpu", **params})


def params_of(app, job_id: int) -> dict:
    with Session(app.state.engine) as s:
        return s.get(Job, job_id).params


def test_resume_with_other_processes_stores_them(app, client, tmp_path):
    job = stopped_job(app, tmp_path, num_processes=2)
    r = client.post(f"/api/jobs/{job.id}/resume", json={"params": {"num_processes": 1}})
    assert r.status_code == 200, r.text
    assert r.json()["params"]["num_processes"] == 1 and r.json()["status"] == "queued"
    stored = params_of(app, job.id)
    assert stored["num_processes"] == 1
    assert {k: v for k, v in stored.items() if k != "num_processes"} == \
        {k: v for k, v in job.params.items() if k != "num_processes"}


def test_resume_without_a_body_keeps_the_params(app, client, tmp_path):
    job = stopped_job(app, tmp_path, num_processes=2)
    r = client.post(f"/api/jobs/{job.id}/resume")
    assert r.status_code == 200, r.text
    assert params_of(app, job.id) == job.params


@pytest.mark.parametrize("body,field,words", [
    ({"params": {"learning_rate": 0.1}}, "params.learning_rate",
     "only the scale knobs (num_processes, gpu_ids, distributed, hosts) can change on "
     "resume; clone the job to change learning_rate"),
    ({"params": {"hosts": "here,studio"}}, "params.hosts",
     "a torch kto job has no hosts knob; its scale knobs are num_processes, gpu_ids, "
     "distributed"),
    ({"params": {"num_processes": 0}}, "params.num_processes", "must be at least 1"),
    ({"params": {"num_processes": 1, "distributed": "fsdp"}}, "params.distributed",
     "fsdp shards the model over several processes"),
])
def test_resume_refuses_what_cannot_change(app, client, tmp_path, body, field, words):
    job = stopped_job(app, tmp_path, num_processes=2)
    msg = refused(client.post(f"/api/jobs/{job.id}/resume", json=body), field)
    assert words in msg, msg
    assert status_of(app, job.id) == JobStatus.cancelled
    assert params_of(app, job.id) == job.params


def test_resume_checks_the_machine_like_a_submission(app, client, tmp_path):
    job = stopped_job(app, tmp_path, device="mps")
    r = client.post(f"/api/jobs/{job.id}/resume", json={"params": {"num_processes": 2}})
    assert "several processes need CUDA GPUs" in refused(r, "params.num_processes")
    r = client.post(f"/api/jobs/{job.id}/resume", json={"settings": {}})
    assert r.status_code == 422  # only params (and force) in the body
    assert status_of(app, job.id) == JobStatus.cancelled


def test_a_resume_keeps_the_checkpoint_s_sharding(tmp_path):
    """HF Trainer reads an FSDP checkpoint's optimizer.bin only under FSDP and a DDP one's
    optimizer.pt only without: a switch is refused before the run fails at the load."""
    from app.jobs.scale_checks import check_same_sharding

    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    job = Job(id=1, name="j", backend="torch", method="kto", model="m", dataset="d",
              model_path=str(tmp_path / "no-model"), last_checkpoint=str(ckpt),
              params=TORCH_KTO.defaults())
    fsdp2 = {**TORCH_KTO.defaults(), "num_processes": 2, "distributed": "fsdp"}
    ddp2 = {**fsdp2, "distributed": "ddp"}
    (ckpt / "optimizer.bin").write_bytes(b"x")  # saved under fsdp
    check_same_sharding(job, fsdp2)
    for params in (TORCH_KTO.defaults(), ddp2):
        with pytest.raises(JobInputError, match="was saved under fsdp"):
            check_same_sharding(job, params)
    (ckpt / "optimizer.bin").unlink()
    (ckpt / "optimizer.pt").write_bytes(b"x")  # saved under ddp or by one process
    check_same_sharding(job, ddp2)
    check_same_sharding(job, TORCH_KTO.defaults())
    with pytest.raises(JobInputError, match="was saved without fsdp"):
        check_same_sharding(job, fsdp2)
