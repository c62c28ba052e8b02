"""The memory sampler with fake facts: events, peaks, the MPS and CUDA probes, failures."""

from __future__ import annotations

import time

import pytest

from contract.events import Event, EventWriter, read_events
from workers.memory import (
    MemorySampler,
    make_mps_probe,
    mlx_probe,
    process_rss_bytes,
    system_memory,
    torch_probe,
)

GIB = 1 << 30
SYSTEM = {"total": 16 * GIB, "available": 6 * GIB, "used": 10 * GIB, "swap_used": GIB}


def fake_rss(values):
    it = iter(values)
    return lambda: next(it)


def test_sample_reports_rss_system_and_backend_and_keeps_peaks():
    backend = iter([(3 * GIB, 4 * GIB), (1 * GIB, 2 * GIB)])

    def probe():
        active, driver = next(backend)
        return {"name": "mps", "active_bytes": active, "peak_bytes": active, "driver_bytes": driver}

    sampler = MemorySampler(
        emit=lambda *a, **k: None,
        backend_probe=probe,
        rss=fake_rss([5 * GIB, 2 * GIB]),
        system=lambda: SYSTEM,
    )
    first = sampler.sample()
    assert first["rss_bytes"] == 5 * GIB
    assert first["system"] == SYSTEM
    assert first["backend"]["name"] == "mps" and first["backend"]["driver_bytes"] == 4 * GIB
    sampler.sample()
    assert sampler.peaks() == {"peak_rss_bytes": 5 * GIB, "peak_backend_bytes": 3 * GIB}


def test_no_backend_on_cpu():
    sampler = MemorySampler(emit=lambda *a, **k: None, rss=lambda: 100, system=lambda: SYSTEM)
    fields = sampler.sample()
    assert fields["backend"] == {
        "name": None,
        "active_bytes": None,
        "peak_bytes": None,
        "driver_bytes": None,
    }
    assert sampler.peaks() == {"peak_rss_bytes": 100, "peak_backend_bytes": None}
    assert torch_probe("cpu") is None


def test_mps_probe_remembers_its_peak():
    current = iter([10, 50, 20])
    probe = make_mps_probe(current=lambda: next(current), driver=lambda: 99)
    seen = [probe() for _ in range(3)]
    assert [s["active_bytes"] for s in seen] == [10, 50, 20]
    assert [s["peak_bytes"] for s in seen] == [10, 50, 50]
    assert all(s["name"] == "mps" and s["driver_bytes"] == 99 for s in seen)


def test_cuda_probe_reads_torch_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 1)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 4)
    assert torch_probe("cuda")() == {
        "name": "cuda",
        "active_bytes": 1,
        "peak_bytes": 3,
        "driver_bytes": 4,
    }


def test_failing_probe_does_not_stop_sampling():
    def broken():
        raise RuntimeError("driver went away")

    sampler = MemorySampler(emit=lambda *a, **k: None, backend_probe=broken, rss=lambda: 1)
    fields = sampler.sample()
    assert "driver went away" in fields["backend"]["error"]
    assert fields["rss_bytes"] == 1


def test_thread_emits_valid_memory_events(tmp_path):
    writer = EventWriter(tmp_path / "events.jsonl")
    sampler = MemorySampler(writer.emit, interval=0.05, system=lambda: SYSTEM).start()
    deadline = time.monotonic() + 10
    while len(read_events(tmp_path / "events.jsonl")[0]) < 2:  # the start's, an interval's
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sampler.stop()
    sampler.stop()  # twice is harmless
    writer.close()
    events, _ = read_events(tmp_path / "events.jsonl")
    assert all(isinstance(e, Event) and e.type == "memory" for e in events)
    assert len(events) >= 3  # one at start, a few on the interval, one at stop
    assert all(e.data["rss_bytes"] > 0 and e.data["system"] == SYSTEM for e in events)
    assert sampler.peak_rss_bytes == max(e.data["rss_bytes"] for e in events)


def test_real_process_and_system_readings():
    assert process_rss_bytes() > 10 << 20
    memory = system_memory()
    assert set(memory) == {"total", "available", "used", "swap_used"}
    assert memory["total"] >= memory["available"] > 0


def test_mlx_probe_reads_active_peak_and_cache_memory():
    mx = pytest.importorskip("mlx.core")
    mx.clear_cache()
    held = mx.ones((256, 1024))  # 1 MiB of float32, evaluated: active
    mx.eval(held)
    reading = mlx_probe()
    assert reading["name"] == "mlx"
    assert reading["active_bytes"] >= 1 << 20 and reading["peak_bytes"] >= reading["active_bytes"]
    del held  # freed, but MLX keeps the buffer in its cache for reuse
    after = mlx_probe()
    assert after["cache_bytes"] >= 1 << 20
    assert after["driver_bytes"] == after["active_bytes"] + after["cache_bytes"]
