"""contract/launch_plan.py's mlx_command: the hostfile in mlx.launch's own format and the
command line mlx.launch's own parser reads (a real launch runs in
tests/integration/test_mlx_distributed_server.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from contract.launch_plan import HOSTFILE, REPO_ROOT, LaunchPlan, mlx_command

TWO_MACS = [{"ssh": "mac-a.local", "ips": ["10.0.0.1"]},
            {"ssh": "mac-b.local", "ips": ["10.0.0.2"]}]


def plan(**kw) -> LaunchPlan:
    return LaunchPlan(**{"launcher": "mlx", "processes": 2, "hosts": TWO_MACS,
                         "starting_port": 40500, **kw})


def test_hostfile_is_read_back_by_mlx_launch_and_carries_the_rank_environment(tmp_path):
    common = pytest.importorskip("mlx._distributed_utils.common")
    cmd = mlx_command(plan(envs=["PYTHONUNBUFFERED=0", "HF_HOME=/data/hf"]), "/venv/python",
                      tmp_path / "config.json", tmp_path)
    hostfile = common.Hostfile.from_file(tmp_path / HOSTFILE)
    assert [(h.rank, h.ssh_hostname, h.ips) for h in hostfile.hosts] == [
        (0, "mac-a.local", ["10.0.0.1"]), (1, "mac-b.local", ["10.0.0.2"])]
    assert hostfile.backend == "ring"
    # the plan's own value wins; what ssh would not carry is added
    assert hostfile.envs == ["PYTHONUNBUFFERED=0", "HF_HOME=/data/hf",
                             "TOKENIZERS_PARALLELISM=false"]
    sep = cmd.index("--")
    assert cmd[sep + 1:] == ["/venv/python", "-m", "workers.mlx", "--config",
                             str(tmp_path / "config.json")]
    launcher = cmd[:sep]
    assert launcher[0] == "/venv/python"
    assert launcher[launcher.index("--hostfile") + 1] == str(tmp_path / HOSTFILE)
    assert launcher[launcher.index("--backend") + 1] == "ring"
    assert launcher[launcher.index("--starting-port") + 1] == "40500"
    assert launcher[launcher.index("--cwd") + 1] == str(REPO_ROOT)


def test_the_launcher_part_runs_mlx_launch_main(tmp_path):
    """`python -m mlx._distributed_utils.launch` would do nothing (the module has no __main__
    guard): the command runs the console script's main, as --print-python shows."""
    pytest.importorskip("mlx._distributed_utils.launch")
    cmd = mlx_command(plan(), sys.executable, tmp_path / "config.json", tmp_path)
    out = subprocess.run([*cmd[:3], "--print-python"], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == sys.executable


@pytest.mark.parametrize(("changes", "names"), [
    ({"mlx_backend": "nccl"}, "ring, jaccl, jaccl-ring, mpi"),
    ({"hosts": []}, "no hosts"),
    ({"hosts": [TWO_MACS[0], {"ssh": "mac-b.local"}]}, "'mac-b.local' has no IP address"),
    ({"hosts": [{"ips": ["10.0.0.9"]}]}, "no ssh name"),
])
def test_a_plan_mlx_launch_cannot_start_is_refused_naming_the_fix(tmp_path, changes, names):
    with pytest.raises(ValueError, match=names):
        mlx_command(plan(**changes), "python", tmp_path / "config.json", tmp_path)
    assert not (tmp_path / HOSTFILE).exists()


def test_mpi_needs_no_ips_and_jaccl_only_rank_0s(tmp_path):
    names_only = [{"ssh": "mac-a.local"}, {"ssh": "mac-b.local"}]
    cmd = mlx_command(plan(mlx_backend="mpi", hosts=names_only), "python",
                      tmp_path / "config.json", tmp_path)
    assert cmd[cmd.index("--backend") + 1] == "mpi"
    assert json.loads((tmp_path / HOSTFILE).read_text())["backend"] == "mpi"
    jaccl = [{**TWO_MACS[0], "rdma": [None, "rdma_en3"]}, {"ssh": "mac-b.local",
                                                            "rdma": ["rdma_en3", None]}]
    mlx_command(plan(mlx_backend="jaccl", hosts=jaccl), "python", tmp_path / "c.json",
                tmp_path)
    assert json.loads((tmp_path / HOSTFILE).read_text())["hosts"] == jaccl
