"""accelerate_command (contract/launch_plan.py): the run's own accelerate config and the launch
command, read back by accelerate's own loader and argument parser."""

from __future__ import annotations

import json
import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

from contract.launch_plan import ACCELERATE_CONFIG, LaunchPlan, accelerate_command


def _launch_args(cmd: list[str]):
    """What `accelerate launch` makes of the command, as far as it goes without starting."""
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    return _validate_launch_command(args)[0]


def test_cpu_processes_are_a_multi_gpu_launch_of_the_worker_module(tmp_path):
    plan = LaunchPlan(launcher="accelerate", processes=2, main_process_port=29123)
    config = tmp_path / "config.json"
    cmd = accelerate_command(plan, sys.executable, config, tmp_path)
    assert cmd[0] == sys.executable
    assert cmd[-4:] == ["-m", "workers.torch", "--config", str(config)]
    yaml = tmp_path / ACCELERATE_CONFIG
    assert cmd[3:5] == ["--config_file", str(yaml)]

    loaded = load_config_from_file(str(yaml))
    assert loaded.distributed_type == DistributedType.MULTI_GPU
    assert (loaded.num_processes, loaded.num_machines, loaded.machine_rank) == (2, 1, 0)
    assert loaded.gpu_ids == "all" and loaded.use_cpu is False
    assert loaded.mixed_precision == "no" and loaded.main_process_port == 29123
    assert loaded.fsdp_config == {}

    args = _launch_args(cmd)
    assert args.multi_gpu and not args.use_fsdp and not args.cpu
    assert args.module and args.training_script == "workers.torch"
    assert args.training_script_args == ["--config", str(config)]
    assert args.num_processes == 2 and args.main_process_port == 29123


def test_gpus_and_fsdp(tmp_path):
    plan = LaunchPlan(launcher="accelerate", processes=2, gpu_ids=[2, 3], fsdp=True)
    cmd = accelerate_command(plan, "/venv/bin/python", tmp_path / "config.json", tmp_path)
    raw = json.loads((tmp_path / ACCELERATE_CONFIG).read_text())
    assert raw["gpu_ids"] == "2,3" and raw["distributed_type"] == "FSDP"
    fsdp = raw["fsdp_config"]
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_use_orig_params"] is True  # LoRA: frozen and trainable in one unit
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # checkpoints hold the adapter

    args = _launch_args(cmd)
    assert args.use_fsdp and args.gpu_ids == "2,3"
    assert args.fsdp_sharding_strategy == "FULL_SHARD"
    assert str(args.fsdp_use_orig_params).lower() == "true"


@pytest.mark.parametrize(("plan", "says"), [
    (LaunchPlan(launcher="accelerate", processes=1), "2 or more processes"),
    (LaunchPlan(launcher="accelerate", processes=2, gpu_ids=[0]), "one process per GPU"),
    (LaunchPlan(launcher="mlx", processes=2), "not accelerate"),
])
def test_a_plan_accelerate_cannot_launch_is_named(tmp_path, plan, says):
    with pytest.raises(ValueError, match=says):
        accelerate_command(plan, sys.executable, tmp_path / "config.json", tmp_path)
    assert not (tmp_path / ACCELERATE_CONFIG).exists()


def test_the_users_default_config_is_never_read(tmp_path, monkeypatch):
    # A default config that would launch 8 processes on the CPU in bf16 through mpirun.
    default = tmp_path / "default_config.yaml"
    default.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\n"
                       "num_processes: 8\nuse_cpu: true\nmixed_precision: bf16\n")
    monkeypatch.setattr("accelerate.commands.launch.default_config_file", str(default))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cmd = accelerate_command(LaunchPlan(launcher="accelerate", processes=2), sys.executable,
                             run_dir / "config.json", run_dir)
    args = _launch_args(cmd)
    assert args.num_processes == 2 and args.multi_gpu and args.mixed_precision == "no"
