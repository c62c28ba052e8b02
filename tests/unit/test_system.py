"""app/system/machine.py: the machine's memory, GPUs, backends and versions, read without ML
imports.

Mac facts are handed in as the text sysctl and vm_stat print on an M4 with 24 GB, so the Mac
arithmetic is checked on any machine; the Linux answer is checked against this machine.
"""

from __future__ import annotations

import dataclasses

import psutil
import pytest

from app.system import machine as system
from app.system.machine import Probes, mac_memory, parse_nvidia_smi, parse_swapusage, parse_vm_stat

GiB = 1024**3

# vm_stat on an M4 Mac with 24 GB (page size 16 KiB), trimmed to the lines we read.
VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               40000.
Pages active:                            600000.
Pages inactive:                          500000.
Pages speculative:                        10000.
Pages throttled:                              0.
Pages wired down:                        200000.
Pages purgeable:                          20000.
"Translation faults":                 123456789.
Pages copy-on-write:                    1234567.
Anonymous pages:                         700000.
File-backed pages:                       410000.
Pages occupied by compressor:            100000.
"""
MEMSIZE = str(24 * GiB)
SWAPUSAGE = "total = 2048.00M  used = 1536.25M  free = 511.75M  (encrypted)"


def mac_probes(machine: str = "arm64", **over) -> Probes:
    facts = {"hw.memsize": MEMSIZE, "vm.swapusage": SWAPUSAGE, "hw.optional.arm64": "1"}
    installed = {"torch": "2.13.0", "mlx": "0.32.4", "mlx-lm": "0.32.2"}
    base = Probes(
        system=lambda: "Darwin", machine=lambda: machine, sysctl=facts.get,
        vm_stat=lambda: VM_STAT, nvidia_smi=lambda: None,
        has_module=lambda name: name in ("torch", "mlx", "mlx_lm"),
        version=installed.get, torch_cuda=lambda: None, cpu_count=lambda: 10,
        psutil_memory=lambda: pytest.fail("a Mac reads sysctl and vm_stat, not psutil"),
    )
    return dataclasses.replace(base, **over)


def test_parse_vm_stat_gives_bytes_per_kind():
    pages = parse_vm_stat(VM_STAT)
    assert pages["free"] == 40000 * 16384
    assert pages["anonymous"] == 700000 * 16384
    assert pages["wired_down"] == 200000 * 16384
    assert pages["occupied_by_compressor"] == 100000 * 16384
    assert "translation_faults" not in pages or pages["translation_faults"] > 0


def test_parse_swapusage():
    swap = parse_swapusage(SWAPUSAGE)
    assert swap["total"] == 2048 * 1024**2
    assert swap["used"] == int(1536.25 * 1024**2)
    assert parse_swapusage("") == {}


def test_mac_memory_counts_like_activity_monitor():
    mem = mac_memory(MEMSIZE, VM_STAT, SWAPUSAGE)
    page = 16384
    used = (700000 - 20000 + 200000 + 100000) * page  # app + wired + compressed
    assert mem == {"total": 24 * GiB, "used": used, "available": 24 * GiB - used,
                   "swap_total": 2048 * 1024**2, "swap_used": int(1536.25 * 1024**2)}


def test_mac_memory_old_vm_stat_and_missing_facts():
    old = "\n".join(line for line in VM_STAT.splitlines() if "Anonymous" not in line)
    mem = mac_memory(MEMSIZE, old, None)
    assert mem["available"] == (40000 + 500000 + 10000) * 16384
    assert mem["swap_total"] == 0
    assert mac_memory(None, VM_STAT, SWAPUSAGE) is None
    assert mac_memory("not a number", VM_STAT, SWAPUSAGE) is None


def test_system_info_on_an_apple_silicon_mac():
    info = system.system_info(mac_probes())
    assert info["platform"] == "Darwin" and info["apple_silicon"] and info["unified_memory"]
    assert info["memory_total_bytes"] == 24 * GiB
    assert 0 < info["memory_available_bytes"] < 24 * GiB
    assert info["swap_used_bytes"] == int(1536.25 * 1024**2)
    assert info["cuda_devices"] == []
    assert info["available_backends"] == ["cpu", "mps", "mlx"]
    assert info["backends"]["mlx"]["device"] == "gpu"
    assert "NVIDIA" in info["backends"]["cuda"]["reason"]
    assert info["versions"]["mlx-lm"] == "0.32.2" and info["versions"]["trl"] is None


def test_rosetta_still_counts_as_apple_silicon():
    assert system.system_info(mac_probes(machine="x86_64"))["apple_silicon"]


def test_intel_mac_has_no_mps_or_mlx():
    facts = {"hw.memsize": MEMSIZE, "vm.swapusage": SWAPUSAGE, "hw.optional.arm64": "0"}
    info = system.system_info(mac_probes(machine="x86_64", sysctl=facts.get))
    assert not info["apple_silicon"]
    assert info["available_backends"] == ["cpu"]
    assert "Apple silicon" in info["backends"]["mps"]["reason"]


def test_cuda_needs_a_gpu_and_a_cuda_build_of_torch():
    smi = "0, NVIDIA H100 80GB HBM3, 81559, 80900\n1, NVIDIA H100 80GB HBM3, 81559, 1000\n"
    linux = dict(system=lambda: "Linux", machine=lambda: "x86_64", nvidia_smi=lambda: smi,
                 psutil_memory=system.psutil_memory)
    info = system.system_info(mac_probes(torch_cuda=lambda: "12.8", **linux))
    assert [d["name"] for d in info["cuda_devices"]] == ["NVIDIA H100 80GB HBM3"] * 2
    assert info["cuda_devices"][1]["memory_free_bytes"] == 1000 * 1024**2
    assert info["backends"]["cuda"] == {"available": True, "reason": "", "cuda_version": "12.8",
                                        "devices": 2}
    cpu_wheel = system.system_info(mac_probes(**linux))
    assert not cpu_wheel["backends"]["cuda"]["available"]
    assert "CPU-only build" in cpu_wheel["backends"]["cuda"]["reason"]
    # On Linux MLX needs its CPU build installed (mlx-cpu), which this fake lacks.
    assert not cpu_wheel["backends"]["mlx"]["available"]


def test_parse_nvidia_smi_skips_junk():
    assert parse_nvidia_smi(None) == []
    assert parse_nvidia_smi("No devices were found\n") == []
    assert parse_nvidia_smi("0, A, 10, x\n") == []


def test_this_machine_matches_psutil_and_imports_no_ml_library():
    import sys

    before = {m for m in sys.modules if m.split(".")[0] in ("torch", "mlx", "transformers")}
    info = system.system_info()
    after = {m for m in sys.modules if m.split(".")[0] in ("torch", "mlx", "transformers")}
    assert after == before
    assert info["memory_total_bytes"] == psutil.virtual_memory().total
    assert info["cpu_count"] and info["backends"]["cpu"]["available"]
    for lib, version in info["versions"].items():
        assert version is None or version[0].isdigit(), lib
