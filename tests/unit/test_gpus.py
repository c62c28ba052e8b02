"""nvidia-smi's used column and the GPUs a job trains on (app/system/machine.py, gpus.py)."""

from __future__ import annotations

from app.models import Job
from app.system.gpus import first_visible_gpu, job_gpus
from app.system.machine import Probes, parse_nvidia_smi, system_info
from contract.launch_plan import LaunchPlan, write_launch_plan

MiB = 1024**2


def test_used_column_and_its_fallback():
    five, four = parse_nvidia_smi("0, A100, 81920, 80000, 1500\n1, A100, 81920, 81000\n")
    assert five["memory_used_bytes"] == 1500 * MiB  # nvidia-smi's own, not total - free
    assert four["memory_used_bytes"] == 920 * MiB


def test_in_use_by_comes_from_the_probe():
    probes = Probes(nvidia_smi=lambda: "0, A, 100, 50, 50\n1, A, 100, 100, 0\n",
                    gpu_jobs=lambda: {0: [7, 3]})
    assert [d["in_use_by"] for d in system_info(probes)["cuda_devices"]] == [[3, 7], []]


def test_job_gpus(tmp_path):
    plan = LaunchPlan(launcher="accelerate", processes=2, gpu_ids=[2, 3])
    write_launch_plan(tmp_path, plan)
    dist = Job(backend="torch", method="kto", model="m", dataset="d",
               params={"num_processes": 2}, run_dir=str(tmp_path))
    assert job_gpus(dist) == [2, 3]
    cpu_plan = Job(backend="torch", method="kto", model="m", dataset="d",
                   params={"num_processes": 2}, run_dir="")
    assert job_gpus(cpu_plan) == []  # no plan yet
    assert job_gpus(Job(backend="mlx", method="kto", model="m", dataset="d")) == []
    assert job_gpus(Job(backend="torch", method="kto", model="m", dataset="d",
                        params={"device": "mps"})) == []
    assert first_visible_gpu({"CUDA_VISIBLE_DEVICES": "3,1"}) == 3
    assert first_visible_gpu({"CUDA_VISIBLE_DEVICES": "GPU-uuid"}) == 0
