"""`prospect doctor` (app/system/doctor.py): each check from hand-made facts.

Mac facts are posed on Linux: a Facts object says "Darwin, arm64 chip" and what torch's and
mlx's probes would answer there, as tests/unit/test_system.py does with sysctl text. The
real probes on this machine, through the CLI, the API and the System page:
tests/api/test_doctor_api.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from app.config import Settings
from app.system import doctor
from app.system.doctor import OK, PROBLEM, WARNING, Facts, run_checks
from app.system.machine import Probes
from tests.helpers import ROOT

GiB = 2**30
PINS = {"torch": "2.13.0", "mlx": "0.32.4", "trl": "1.16.0", "transformers": "5.24.0"}
TORCH_MAC = {"importable": True, "version": "2.13.0", "cuda_build": None,
             "cuda_available": False, "cuda_bf16": False, "mps_built": True,
             "mps_available": True, "device": "mps", "mps_bf16": True, "mac_version": "15.3"}
MLX_MAC = {"importable": True, "version": "0.32.4", "device": "gpu", "metal_available": True,
           "working_set_limit": 16 * GiB, "memory_size": 24 * GiB}
TORCH_LINUX = {"importable": True, "version": "2.13.0+cpu", "cuda_build": None,
               "cuda_available": False, "cuda_bf16": False, "mps_built": False,
               "mps_available": False, "device": "cpu", "cpu_capability": "AVX2"}


def mac(**over) -> Facts:
    """An M4 Mac with 24 GiB, torch with MPS, mlx on Metal, the tested versions."""
    base = Facts(system="Darwin", machine="arm64", arm64_cpu=True, python="3.11.9",
                 tested_python="3.11", constraints="constraints/macos-arm64.txt", pins=PINS,
                 versions={"torch": "2.13.0", "mlx": "0.32.4", "trl": "1.16.0"},
                 torch=TORCH_MAC, mlx=MLX_MAC,
                 memory={"total": 24 * GiB, "available": 14 * GiB, "swap_total": 2 * GiB,
                         "swap_used": 0},
                 disks=[{"label": "PROSPECT_HOME", "path": "/Users/a/.prospect",
                         "free": 200 * GiB, "total": 460 * GiB, "env": "PROSPECT_HOME"}],
                 has_caffeinate=True,
                 hub_reachable=lambda: pytest.fail("offline: the hub must not be asked"))
    return dataclasses.replace(base, **over)


def linux(**over) -> Facts:
    base = dataclasses.replace(mac(), system="Linux", machine="x86_64", arm64_cpu=False,
                               constraints="constraints/linux-cpu.txt", torch=TORCH_LINUX,
                               mlx={**MLX_MAC, "device": "cpu", "working_set_limit": None},
                               versions={"torch": "2.13.0+cpu", "mlx": "0.32.4"},
                               has_caffeinate=False)
    return dataclasses.replace(base, **over)


def by_name(facts: Facts) -> dict[str, doctor.Check]:
    return {c.name: c for c in run_checks(facts)}


# --- Mac checks, from injected facts -----------------------------------------------------------
def test_a_healthy_mac_is_all_ok_and_names_mps_metal_and_its_working_set():
    checks = by_name(mac())
    assert {c.status for c in checks.values()} == {OK}, checks
    assert "on mps" in checks["torch"].detail
    assert "gpu (Metal)" in checks["MLX"].detail
    assert "16.0 GiB resident" in checks["Memory"].detail
    assert "unified memory 24.0 GiB" in checks["Memory"].detail
    assert checks["Sleep"].status == OK


def test_mac_torch_without_mps_is_a_problem_with_the_reinstall_command():
    c = by_name(mac(torch={**TORCH_MAC, "mps_built": False, "mps_available": False,
                           "device": "cpu"}))["torch"]
    assert c.status == PROBLEM and "built without MPS" in c.detail
    assert c.action == ("pip install --force-reinstall --index-url https://pypi.org/simple "
                        "torch==2.13.0")


def test_rosetta_python_is_a_problem_for_both_backends():
    checks = by_name(mac(machine="x86_64", torch={**TORCH_MAC, "mps_available": False,
                                                  "device": "cpu"}))
    assert checks["torch"].status == PROBLEM and "Rosetta" in checks["torch"].detail
    assert checks["MLX"].status == PROBLEM and "arm64 Python" in checks["MLX"].action


def test_mps_built_but_unavailable_asks_for_a_newer_macos():
    c = by_name(mac(torch={**TORCH_MAC, "mps_available": False, "device": "cpu",
                           "mac_version": "12.1"}))["torch"]
    assert c.status == PROBLEM and "12.1" in c.detail and "12.3" in c.action


def test_mlx_on_the_cpu_of_a_mac_is_a_problem():
    c = by_name(mac(mlx={**MLX_MAC, "device": "cpu", "metal_available": False}))["MLX"]
    assert c.status == PROBLEM and "Metal" in c.detail and "mlx-metal" in c.action


def test_metal_limit_falls_back_to_the_wired_limit_sysctl_without_mlx():
    c = by_name(mac(mlx=None, wired_limit_mb=20480))["Memory"]
    assert "20.0 GiB resident" in c.detail


def test_missing_caffeinate_warns_on_a_mac_and_is_not_checked_elsewhere():
    assert by_name(mac(has_caffeinate=False))["Sleep"].status == WARNING
    assert "Sleep" not in by_name(linux())


def test_mps_without_bf16_warns():
    c = by_name(mac(torch={**TORCH_MAC, "mps_bf16": False}))["bf16"]
    assert c.status == WARNING and "macOS" in c.action


def test_heavy_swap_and_little_memory_warn():
    checks = by_name(mac(memory={"total": 24 * GiB, "available": 2 * GiB,
                                 "swap_total": 6 * GiB, "swap_used": 5 * GiB}))
    assert checks["Swap"].status == WARNING and "5.0 GiB" in checks["Swap"].detail
    assert checks["Memory"].status == WARNING


# --- the rest, from injected facts -------------------------------------------------------------
def test_cpu_only_torch_beside_an_nvidia_gpu_is_a_problem_naming_a_cuda_wheel():
    gpu = [{"index": 0, "name": "NVIDIA H200", "memory_total_bytes": 140 * GiB,
            "memory_free_bytes": 139 * GiB}]
    c = by_name(linux(cuda_devices=gpu))["torch"]
    assert c.status == PROBLEM and "CPU-only build" in c.detail
    assert "download.pytorch.org/whl/cu" in c.action


def test_cuda_torch_that_cannot_reach_the_gpu_is_a_problem():
    gpu = [{"index": 0, "name": "T4", "memory_total_bytes": 16 * GiB,
            "memory_free_bytes": 15 * GiB}]
    c = by_name(linux(cuda_devices=gpu, torch={**TORCH_LINUX, "cuda_build": "12.8"}))["torch"]
    assert c.status == PROBLEM and "driver" in c.action


def test_a_gpu_without_bf16_warns():
    gpu = [{"index": 0, "name": "T4", "memory_total_bytes": 16 * GiB,
            "memory_free_bytes": 15 * GiB}]
    torch = {**TORCH_LINUX, "cuda_build": "12.8", "cuda_available": True, "device": "cuda",
             "cuda_names": ["Tesla T4"]}
    checks = by_name(linux(cuda_devices=gpu, torch=torch))
    assert checks["torch"].status == OK and "on cuda (Tesla T4)" in checks["torch"].detail
    assert checks["bf16"].status == WARNING


def test_versions_off_the_tested_set_warn_and_local_labels_do_not_count():
    assert by_name(linux())["Versions"].status == OK  # 2.13.0+cpu is the pinned 2.13.0
    c = by_name(linux(versions={"torch": "2.13.0+cpu", "trl": "1.17.0"}))["Versions"]
    assert c.status == WARNING and "trl 1.17.0 (tested 1.16.0)" in c.detail
    assert "make install" in c.action


def test_a_backend_that_fails_to_import_is_a_problem_and_one_missing_is_a_warning():
    broken = {"importable": False, "error": "ImportError: libc10.so: cannot open"}
    c = by_name(linux(torch=broken))["torch"]
    assert c.status == PROBLEM and "libc10" in c.detail and "torch==2.13.0" in c.action
    c = by_name(linux(mlx=None))["MLX"]
    assert c.status == WARNING and "constraints/linux-cpu.txt" in c.action
    assert by_name(linux(mlx=None, torch=None))["torch"].status == PROBLEM


def test_low_disk_is_a_problem_naming_the_variable_to_move():
    low = {"label": "hub cache", "path": "/x/hub", "free": GiB, "total": 100 * GiB,
           "env": "HF_HOME"}
    c = by_name(linux(disks=[low]))["Disk (hub cache)"]
    assert c.status == PROBLEM and "HF_HOME" in c.action and "1.0 GiB free" in c.detail


def test_the_hub_is_asked_only_when_downloads_are_on():
    assert by_name(linux())["Hub"].status == OK  # hub_reachable would fail the test if asked
    assert by_name(linux(downloads=True, hub_reachable=lambda: True))["Hub"].status == OK
    c = by_name(linux(downloads=True, hub_reachable=lambda: False))["Hub"]
    assert c.status == PROBLEM and "unreachable" in c.detail


def test_an_unreachable_hub_answers_within_the_timeout():
    import time

    t0 = time.monotonic()  # a port nothing listens on: refused at once, never a hang
    assert doctor.tcp_reachable("http://127.0.0.1:9", timeout=1.0) is False
    assert time.monotonic() - t0 < 5


def test_offline_reason_follows_the_settings_and_hf_hub_offline(tmp_path):
    probes = Probes(nvidia_smi=lambda: None)
    f = doctor.gather(Settings(home=tmp_path, allow_downloads=True), probes,
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert not f.downloads and f.offline_reason == "HF_HUB_OFFLINE is set"
    assert [d["label"] for d in f.disks] == ["PROSPECT_HOME", "hub cache"]
    assert f.disks[1]["path"] == str(tmp_path / "hf" / "hub")  # not created, still measured


def test_a_token_is_required_off_loopback():
    c = by_name(linux(host="0.0.0.0", loopback=False))["API token"]
    assert c.status == PROBLEM and "PROSPECT_API_TOKEN" in c.action
    assert by_name(linux(host="0.0.0.0", loopback=False, api_token=True))["API token"].status == OK


def test_python_older_than_the_tested_one_warns():
    assert by_name(linux(python="3.13.1"))["Python"].status == WARNING
    assert by_name(linux(python="3.11.2"))["Python"].status == OK


def test_constraints_file_parsing(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# head\n# Python 3.11\nTorch==2.13.0+cpu\nmlx_lm==0.32.2\n\n")
    assert doctor.read_constraints(path) == ({"torch": "2.13.0", "mlx-lm": "0.32.2"}, "3.11")
    pins, python = doctor.read_constraints(ROOT / "constraints" / "linux-cpu.txt")
    assert python and {"torch", "trl", "transformers", "mlx", "mlx-lm"} <= set(pins)


def test_a_probe_that_cannot_start_says_so():
    out = doctor.run_probe("/nonexistent/python", "torch")
    assert out["importable"] is False and "/nonexistent/python" in out["error"]


# --- the real thing on this machine --------------------------------------------------------------
