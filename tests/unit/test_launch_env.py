"""What a worker process starts with (contract/launch_env.py)."""

from contract.launch_env import MMAP_THRESHOLD, TOP_PAD, worker_env


def test_torch_on_linux_gets_a_fixed_mmap_threshold_unless_the_person_set_one():
    env = worker_env({"PATH": "/bin"}, "torch", system="Linux")
    assert env["MALLOC_MMAP_THRESHOLD_"] == MMAP_THRESHOLD == str(1 << 20)
    assert env["MALLOC_TOP_PAD_"] == TOP_PAD == str(64 << 20)  # no page fault storm a step
    assert env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == "/bin"
    mine = worker_env({"MALLOC_MMAP_THRESHOLD_": "65536"}, "torch", system="Linux")
    assert mine["MALLOC_MMAP_THRESHOLD_"] == "65536"


def test_no_glibc_setting_for_a_mac_or_for_mlx():
    assert "MALLOC_MMAP_THRESHOLD_" not in worker_env({}, "torch", system="Darwin")
    assert "MALLOC_MMAP_THRESHOLD_" not in worker_env({}, "mlx", system="Linux")
    assert "MALLOC_TOP_PAD_" not in worker_env({}, "torch", system="Darwin")
