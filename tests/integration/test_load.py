"""A short, bounded version of bench/load.py: 20 live pages (SSE) and polling scripts on
loopback while a worker writes events fast. No event lost or repeated for any client, no
failed poll, no "database is locked"."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from load import run_load  # noqa: E402


def test_twenty_live_pages_and_pollers_lose_and_repeat_nothing(tmp_path):
    result = run_load(tmp_path, clients=20, pollers=3, events=600, rate=600, timeout=60)
    print(result)  # p50/p95 with -s
    assert result["status"] == "succeeded" and result["events"] == result["file_lines"] == 600
    assert result["clients_exact"] == 20, result  # each got seqs 1..600 once, in order
    assert not result["client_errors"] and not result["poll_failures"], result
    assert result["database_locked"] == 0 and result["server_errors"] == 0, result
    assert result["polls"] > 0 and result["job_p95_ms"] < 2000, result
