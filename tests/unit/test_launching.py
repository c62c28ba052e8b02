"""app/jobs/launching.py: the launch plan the server writes for a job of several processes,
from the job's scale knobs, this machine's GPUs (as nvidia-smi lists them) and the Hosts
setting."""

from __future__ import annotations

import socket

import pytest

from app.config import Settings
from app.hosts import write_hosts
from app.jobs.launching import free_port_range, launch_plan_for
from app.models import Job
from contract.knob_core import ParamError
from contract.knobs import MLX_KTO, TORCH_KTO

GPUS = [{"index": i, "name": "H200", "memory_total_bytes": 1, "memory_free_bytes": 1}
        for i in (0, 1, 2, 3)]


def torch_job(**params) -> Job:
    return Job(id=1, name="j", backend="torch", method="kto", model="m", dataset="d",
               model_path="/nowhere", params={**TORCH_KTO.defaults(), **params})


def test_one_process_has_no_plan(tmp_path):
    assert launch_plan_for(torch_job(), Settings(home=tmp_path), GPUS) is None
    mlx = Job(id=2, name="j", backend="mlx", method="kto", model="m", dataset="d",
              params=MLX_KTO.defaults())
    assert launch_plan_for(mlx, Settings(home=tmp_path)) is None


def test_torch_takes_the_first_gpus_or_the_named_ones(tmp_path):
    settings = Settings(home=tmp_path)
    plan = launch_plan_for(torch_job(num_processes=2, distributed="ddp"), settings, GPUS)
    assert (plan.launcher, plan.processes, plan.gpu_ids, plan.fsdp) == \
        ("accelerate", 2, [0, 1], False)
    assert 0 < plan.main_process_port < 65536
    plan = launch_plan_for(torch_job(num_processes=2, gpu_ids="3,1", distributed="fsdp"),
                           settings, GPUS)
    assert (plan.gpu_ids, plan.fsdp) == ([3, 1], True)


def test_torch_on_the_cpu_runs_gloo_processes_with_ddp(tmp_path):
    settings = Settings(home=tmp_path)
    for gpus, params in (([], {}), (GPUS, {"device": "cpu"})):
        plan = launch_plan_for(torch_job(num_processes=2, **params), settings, gpus)
        assert (plan.gpu_ids, plan.fsdp, plan.cpu) == ([], False, True)


def test_mlx_hosts_come_from_the_setting_this_mac_first(tmp_path):
    settings = Settings(home=tmp_path)
    write_hosts(settings, {"backend": "ring", "envs": ["MLX_X=1"], "hosts": [
        {"name": "studio", "ssh": "studio.local", "ips": ["192.168.1.20"]},
        {"name": "here", "ssh": "127.0.0.1", "ips": ["192.168.1.10"]}]})
    job = Job(id=3, name="j", backend="mlx", method="kto", model="m", dataset="d",
              params={**MLX_KTO.defaults(), "hosts": "studio,here"})
    plan = launch_plan_for(job, settings)
    assert plan.launcher == "mlx" and plan.processes == 2
    assert [h["ssh"] for h in plan.hosts] == ["127.0.0.1", "studio.local"]
    assert (plan.mlx_backend, plan.envs) == ("ring", ["MLX_X=1"])
    assert plan.starting_port > 0
    job.params = {**job.params, "hosts": "here,gone"}  # the setting changed since
    with pytest.raises(ParamError, match="unknown host gone"):
        launch_plan_for(job, settings)


def test_a_port_range_is_free_now():
    base = free_port_range(3)
    for port in range(base, base + 3):
        with socket.socket() as s:
            s.bind(("", port))  # raises if it was taken


def test_one_process_on_a_machine_of_several_gpus_sees_one():
    """Two visible GPUs make HF Trainer wrap the model in nn.DataParallel, which KTOTrainer
    refuses: a single-process job is given one GPU."""
    from app.jobs.launching import one_gpu_env

    assert one_gpu_env(torch_job(), {}, GPUS) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert one_gpu_env(torch_job(gpu_ids="2"), {}, GPUS) == {"CUDA_VISIBLE_DEVICES": "2"}
    assert one_gpu_env(torch_job(), {}, GPUS[:1]) == {}  # one GPU: nothing to narrow
    assert one_gpu_env(torch_job(), {}, []) == {}
    assert one_gpu_env(torch_job(device="cpu"), {}, GPUS) == {}
    assert one_gpu_env(torch_job(num_processes=2), {}, GPUS) == {}  # the launcher places ranks
    # the person's own CUDA_VISIBLE_DEVICES is narrowed to one of its GPUs, never widened
    assert one_gpu_env(torch_job(), {"CUDA_VISIBLE_DEVICES": "3,1"}, GPUS) == \
        {"CUDA_VISIBLE_DEVICES": "3"}
    # gpu_ids is nvidia-smi's index everywhere (the scale checks hold it to the listed GPUs)
    assert one_gpu_env(torch_job(gpu_ids="2"), {"CUDA_VISIBLE_DEVICES": "3,1"}, GPUS) == \
        {"CUDA_VISIBLE_DEVICES": "2"}
    assert one_gpu_env(torch_job(), {"CUDA_VISIBLE_DEVICES": "2"}, GPUS) == {}
    mlx = Job(id=2, name="j", backend="mlx", method="kto", model="m", dataset="d",
              params=MLX_KTO.defaults())
    assert one_gpu_env(mlx, {}, GPUS) == {}
