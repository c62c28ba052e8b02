"""The ranks/ files of a distributed run (contract/ranks.py) and who is blamed when it fails
(workers/world.py), with real files and real processes: a child that writes its own start
file, then is killed, or writes its end file late."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from contract.ranks import (
    RankInfo,
    communication_failure,
    failure_event,
    first_failure,
    ranks_dir,
    read_ranks,
    write_rank_end,
    write_rank_start,
)
from tests.helpers import ROOT
from workers.world import alive, culprit, is_communication_error, mlx_world, torch_world

GLOO_CLOSED = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
                           "closed by peer [127.0.0.1]:29500")


def _rank(run_dir: Path, rank: int, then: str = "time.sleep(120)") -> subprocess.Popen:
    """A real process that writes ranks/<rank>.json as a worker does, then does ``then``."""
    code = textwrap.dedent(f"""
        import sys, time, psutil
        from contract.ranks import write_rank_end, write_rank_start
        write_rank_start(sys.argv[1], {rank}, 2, {rank}, psutil.Process().create_time())
        print("started", flush=True)
        {then}
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    return proc


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _me(run_dir: Path) -> None:
    write_rank_start(run_dir, 0, 2, 0, psutil.Process().create_time())


def test_start_and_end_files_read_back(tmp_path):
    write_rank_start(tmp_path, 1, 2, 1, 123.0)
    write_rank_start(tmp_path, 0, 2, 0, 122.0)
    write_rank_end(tmp_path, 1, "failed", {"error_type": "out_of_memory", "message": "m",
                                           "hint": "h"})
    (ranks_dir(tmp_path) / "7.json").write_text("{half")  # a torn file is skipped
    zero, one = read_ranks(tmp_path)
    assert (zero.rank, zero.status, zero.pid, zero.host) == (0, None, os.getpid(),
                                                            socket.gethostname())
    assert (one.rank, one.local_rank, one.status, one.started_at) == (1, 1, "failed", 123.0)
    assert one.error["error_type"] == "out_of_memory" and one.ended_at > 0


def test_first_failure_is_the_earliest_error_else_a_silent_death(tmp_path):
    for r in (0, 1, 2):
        write_rank_start(tmp_path, r, 3, r, 1.0)
    write_rank_end(tmp_path, 2, "failed", {"error_type": "a", "message": "late"})
    time.sleep(0.01)
    write_rank_end(tmp_path, 1, "failed", {"error_type": "b", "message": "later"})
    ranks = read_ranks(tmp_path)
    assert first_failure(ranks, lambda r: True, exclude=0).rank == 2
    assert first_failure(ranks, lambda r: True, exclude=2).rank == 1
    write_rank_end(tmp_path, 1, "succeeded")
    write_rank_end(tmp_path, 2, "cancelled")
    ranks = read_ranks(tmp_path)
    assert first_failure(ranks, lambda r: True, exclude=0) is None
    assert first_failure(ranks, lambda r: r.rank != 0) is not None  # 0: no end, not alive


def test_a_silent_death_comes_before_the_peer_lost_errors_it_caused(tmp_path):
    """Rank 0 killed: rank 1 then fails of "connection lost" and writes its end file; the
    cause is rank 0. A failure of a rank's own still comes first."""
    for r in (0, 1, 2):
        write_rank_start(tmp_path, r, 3, r, 1.0)
    write_rank_end(tmp_path, 1, "failed", {"error_type": "RuntimeError",
                                           "message": "[ring] connection to a peer was lost"})
    gone = lambda r: r.rank != 0  # noqa: E731 - rank 0's process is gone
    assert first_failure(read_ranks(tmp_path), gone).rank == 0
    assert first_failure(read_ranks(tmp_path), lambda r: True).rank == 1  # none dead: it
    time.sleep(0.01)
    write_rank_end(tmp_path, 2, "failed", {"error_type": "out_of_memory", "message": "oom"})
    assert first_failure(read_ranks(tmp_path), gone).rank == 2


def test_failure_event_names_the_rank(tmp_path):
    write_rank_start(tmp_path, 1, 2, 1, 1.0)
    (died,) = read_ranks(tmp_path)
    event = failure_event(died)
    assert event["error_type"] == "rank_died" and event["rank"] == 1
    assert "rank 1 of 2" in event["message"] and event["hint"]
    write_rank_end(tmp_path, 1, "failed", {"error_type": "out_of_memory", "message": "CUDA "
                                           "out of memory", "hint": "lower the batch"})
    (failed,) = read_ranks(tmp_path)
    event = failure_event(failed)
    assert event["error_type"] == "out_of_memory" and event["hint"] == "lower the batch"
    assert event["message"].startswith("rank 1 of 2") and "CUDA out of memory" in event["message"]


def test_alive_sees_a_running_a_killed_and_a_reaped_process(tmp_path, procs):
    procs.append(proc := _rank(tmp_path, 1))
    (info,) = read_ranks(tmp_path)
    assert info.pid == proc.pid and alive(info)
    assert not alive(replace(info, started_at=info.started_at - 60))  # a reused PID
    assert alive(replace(info, host="another-mac"))  # cannot be seen from here: alive
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not alive(info)  # killed, not yet reaped by its parent
    proc.wait()
    assert not alive(info)


def _end(run_dir: Path, rank: int, error: dict, t: float) -> None:
    """An end file written at ``t`` (a time before or after this rank's own failure)."""
    (ranks_dir(run_dir) / f"{rank}.end.json").write_text(json.dumps(
        {"rank": rank, "status": "failed", "error": error, "t": t}))


def test_own_real_error_stands_against_a_later_or_a_peer_lost_error(tmp_path, procs):
    _me(tmp_path)
    procs.append(_rank(tmp_path, 1))
    oom = MemoryError("out of memory")
    # The peer's "connection lost", even an earlier one, is a consequence: ours stands.
    _end(tmp_path, 1, {"error_type": "RuntimeError", "message": "Connection closed by peer"},
         time.time() - 60)
    assert culprit(tmp_path, 0, oom) is None
    # The peer's own error, but later than ours: ours came first.
    _end(tmp_path, 1, {"error_type": "ValueError", "message": "row 3"}, time.time() + 60)
    assert culprit(tmp_path, 0, oom) is None
    # The same error before ours: the peer's is the cause.
    _end(tmp_path, 1, {"error_type": "ValueError", "message": "row 3"}, time.time() - 60)
    assert culprit(tmp_path, 0, oom).rank == 1


def test_a_peers_own_error_after_our_peer_lost_error_is_still_the_cause(tmp_path):
    """Rank 0 fails of "connection lost" first (its end file is the earliest); rank 1's own
    error lands after it: rank 1 is blamed, by the server and by rank 2."""
    for r in (0, 1, 2):
        write_rank_start(tmp_path, r, 3, r, 1.0)
    _end(tmp_path, 0, {"error_type": "distributed", "message": "Connection reset"}, 100.0)
    _end(tmp_path, 1, {"error_type": "out_of_memory", "message": "oom"}, 101.0)
    ranks = read_ranks(tmp_path)
    assert first_failure(ranks, lambda r: True).rank == 1
    assert first_failure(ranks, lambda r: True, exclude=2).rank == 1
    assert culprit(tmp_path, 2, GLOO_CLOSED, is_alive=lambda r: True, wait_s=0).rank == 1


def test_culprit_blames_in_first_failures_order(tmp_path, procs):
    """A peer with an error of its own comes before one that died without a word, for a
    communication error and for a stop alike (as the server blames, contract/ranks.py)."""
    _me(tmp_path)
    procs.append(dead := _rank(tmp_path, 1))
    procs.append(_rank(tmp_path, 2))
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    # Rank 2 still runs without an end file: a communication error waits for it a while.
    assert culprit(tmp_path, 0, GLOO_CLOSED, wait_s=0.3).rank == 1
    write_rank_end(tmp_path, 2, "failed", {"error_type": "out_of_memory", "message": "oom"})
    for own in (GLOO_CLOSED, None):
        found = culprit(tmp_path, 0, own, wait_s=10)
        assert (found.rank, found.status) == (2, "failed")
        assert first_failure(read_ranks(tmp_path), alive, exclude=0).rank == 2


START = {"rank": 1, "world_size": 2, "local_rank": 1, "host": "h", "pid": 4242,
         "started_at": 1.0}


@pytest.mark.parametrize("start", [
    "null", "[]", '"rank 1"', json.dumps({**START, "pid": -1}),
    json.dumps({**START, "pid": "4242"}), json.dumps({**START, "rank": -1}),
    json.dumps({**START, "rank": True}), json.dumps({**START, "started_at": "yesterday"}),
])
def test_a_malformed_start_file_is_skipped(tmp_path, start):
    write_rank_start(tmp_path, 0, 2, 0, 1.0)
    (ranks_dir(tmp_path) / "1.json").write_text(start)
    assert [r.rank for r in read_ranks(tmp_path)] == [0]


@pytest.mark.parametrize(("end", "error", "status", "ended_at"), [
    ("null", None, None, None),
    ("[]", None, None, None),
    ('{"status": "failed", "error": "CUDA out of memory", "t": 5}',
     {"message": "CUDA out of memory"}, "failed", 5.0),
    ('{"status": "failed", "error": ["x"], "t": "noon"}', None, "failed", None),
    ('{"status": 3, "error": {"error_type": 7, "message": "m", "hint": null}, "t": null}',
     {"message": "m"}, None, None),
])
def test_a_malformed_end_file_is_sanitized(tmp_path, end, error, status, ended_at):
    write_rank_start(tmp_path, 1, 2, 1, 1.0)
    (ranks_dir(tmp_path) / "1.end.json").write_text(end)
    (info,) = read_ranks(tmp_path)
    assert (info.error, info.status, info.ended_at) == (error, status, ended_at)
    # Whatever was there, the blame and its event come out whole.
    assert first_failure([info], lambda r: False) is not None or status not in (None, "failed")
    event = failure_event(info)
    assert event["rank"] == 1 and isinstance(event["error_type"], str) and event["hint"]


def test_an_error_that_is_not_a_dict_is_coped_with():
    info = RankInfo(rank=1, world_size=2, local_rank=1, host="h", pid=5, started_at=1.0,
                    status="failed", error="Connection closed by peer", ended_at=2.0)
    assert communication_failure(info)
    assert "Connection closed by peer" in failure_event(info)["message"]
    assert not communication_failure(replace(info, error=["x"]))
    assert failure_event(replace(info, error=["x"]))["error_type"] == "rank_failed"


def test_a_pid_psutil_refuses_is_not_alive(tmp_path):
    write_rank_start(tmp_path, 0, 2, 0, 1.0)
    (info,) = read_ranks(tmp_path)
    assert not alive(replace(info, pid=-1))
    assert not alive(replace(info, pid=0))


def test_communication_error_waits_for_the_peer_that_failed_first(tmp_path, procs):
    _me(tmp_path)
    # The peer is still unwinding its own error: its end file comes 0.5 s after ours.
    procs.append(_rank(tmp_path, 1, then=(
        "time.sleep(0.5); write_rank_end(sys.argv[1], 1, 'failed', {'error_type': "
        "'out_of_memory', 'message': 'CUDA out of memory', 'hint': 'lower the batch'}); "
        "time.sleep(120)")))
    t0 = time.monotonic()
    found = culprit(tmp_path, 0, GLOO_CLOSED, wait_s=10)
    assert found is not None and found.rank == 1 and found.status == "failed"
    assert time.monotonic() - t0 < 8
    assert failure_event(found)["error_type"] == "out_of_memory"


def test_a_killed_peer_is_blamed_for_a_communication_error_or_a_stop(tmp_path, procs):
    _me(tmp_path)
    procs.append(proc := _rank(tmp_path, 1))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for own in (GLOO_CLOSED, None):  # None: rank 0 was stopped (cancelled)
        found = culprit(tmp_path, 0, own, wait_s=10)
        assert found is not None and found.rank == 1 and found.status is None
        assert failure_event(found)["error_type"] == "rank_died"


def test_a_stop_with_every_peer_running_is_a_plain_cancel_without_waiting(tmp_path, procs):
    _me(tmp_path)
    procs.append(_rank(tmp_path, 1))
    t0 = time.monotonic()
    assert culprit(tmp_path, 0, None, wait_s=30) is None
    assert time.monotonic() - t0 < 5


def test_the_wait_is_bounded_when_the_peer_never_answers(tmp_path, procs):
    _me(tmp_path)
    procs.append(_rank(tmp_path, 1))
    t0 = time.monotonic()
    assert culprit(tmp_path, 0, GLOO_CLOSED, wait_s=0.5) is None
    assert 0.5 <= time.monotonic() - t0 < 5


def test_communication_errors_are_told_apart():
    assert is_communication_error(GLOO_CLOSED)
    assert is_communication_error(RuntimeError("NCCL communicator was aborted on rank 1"))
    assert not is_communication_error(ValueError("row 3 has no label"))
    assert not is_communication_error(None)


def test_each_launchers_environment_gives_the_place(tmp_path):
    assert torch_world({}) == (0, 1, 0) and not torch_world({}).distributed
    assert torch_world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    ring = tmp_path / "ring.json"
    ring.write_text('[["10.0.0.1:5000"], ["10.0.0.2:5000"], ["10.0.0.3:5000"]]')
    assert mlx_world({"MLX_RANK": "2", "MLX_HOSTFILE": str(ring)}) == (2, 3, 0)
    assert mlx_world({}) == (0, 1, 0)
    assert mlx_world({"MLX_RANK": "1", "MLX_WORLD_SIZE": "2"}).distributed


def test_a_torch_ranks_communication_failure_says_where_to_look():
    from workers.torch.errors import describe_error

    lost = describe_error(GLOO_CLOSED)
    assert lost["error_type"] == "distributed" and "Root Cause" in lost["hint"]
    # Out of memory stays out of memory, even in NCCL's words.
    assert describe_error(RuntimeError("NCCL error: CUDA out of memory"))["error_type"] == \
        "out_of_memory"
    port = describe_error(OSError(98, "Address already in use"))
    assert port["error_type"] == "port_in_use" and "free port" in port["hint"]
    assert describe_error(ValueError("row 3"))["error_type"] == "ValueError"
    fsdp = describe_error(RuntimeError("There are currently no available devices found, must "
                                       "be one of 'XPU', 'CUDA', 'MLU', 'NPU', 'MUSA', or 'HPU'."))
    assert fsdp["error_type"] == "device" and "ddp" in fsdp["hint"]


def test_an_adapter_saved_without_weights_is_a_failure(tmp_path):
    import torch
    from safetensors.torch import save_file

    from workers.runtime import HintedError
    from workers.torch.kto import check_saved_weights

    save_file({"w.lora_A.weight": torch.ones(2, 2)}, str(tmp_path / "adapter_model.safetensors"))
    check_saved_weights(tmp_path)
    save_file({}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(HintedError, match="holds no weights"):
        check_saved_weights(tmp_path)
