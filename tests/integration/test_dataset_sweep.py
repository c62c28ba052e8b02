"""A server killed with SIGKILL while a dataset comes in leaves nothing that outlives the next
start: the temporary upload is removed, a half-analysed folder is moved aside (with a log
line) so the name can be used again, and a folder whose rows were complete is registered."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from tests.helpers.server import make_server, upload


def wait_for(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def rows(count: int) -> bytes:
    return "".join(json.dumps({"prompt": f"q{i} " + "words " * 20, "completion": "a " * 10,
                               "label": i % 2 == 0}) + "\n" for i in range(count)).encode()


def test_a_server_killed_mid_upload_and_mid_analysis_leaves_nothing_behind(demo_home,
                                                                           tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    datasets = home / "datasets"
    server = make_server(home)
    server.start()
    try:
        # 1. Killed while the body streams in: datasets/.upload-* is all there is.
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /api/datasets?name=streamed&filename=s.jsonl HTTP/1.1\r\n"
                     b"Host: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 50000000\r\n\r\n" + rows(2000))
        wait_for(lambda: list(datasets.glob(".upload-*")), what="no .upload-* file")
        server.stop(signal.SIGKILL)
        sock.close()
        assert list(datasets.glob(".upload-*"))

        # 2. Killed while the rows are analysed: datasets/slow/ exists, its entry does not.
        server.start()
        assert not list(datasets.glob(".upload-*"))  # 1 is cleaned up at start
        def doomed_upload() -> None:
            with contextlib.suppress(OSError):  # the server dies before it answers
                upload(server, "slow", rows(20000), "slow.jsonl")

        thread = threading.Thread(target=doomed_upload, daemon=True)
        thread.start()
        wait_for(lambda: (datasets / "slow" / ".slow.jsonl.partial").is_file(),
                 what="the analysis did not start")
        server.stop(signal.SIGKILL)
        thread.join(timeout=30)
        assert (datasets / "slow").is_dir() and not (datasets / "slow" / "slow.jsonl").exists()
        # 3. What a kill between writing the rows and the database entry would leave.
        done = datasets / "done"
        done.mkdir()
        (done / "original.jsonl").write_bytes(rows(10))
        (done / "done.jsonl").write_bytes(rows(10))
        (datasets / ".upload-stale.jsonl").write_bytes(b"x")

        server.start()
        ids = [d["id"] for d in server.get("/api/datasets")]
        assert "done" in ids and "slow" not in ids
        entry = server.get("/api/datasets/done")
        assert entry["rows"] == 10 and entry["kind"] == "kto" and entry["source"] == "upload"
        assert not (datasets / "slow").exists() and not list(datasets.glob(".upload-*"))
        aside = list((datasets / ".orphaned").glob("slow-*"))
        assert len(aside) == 1 and (aside[0] / "original.jsonl").is_file()
        log = Path(server.log_path).read_text()
        assert "datasets/slow had no database entry" in log and str(aside[0]) in log
        # The names are free again.
        for name in ("slow", "streamed"):
            status, body = upload(server, name, rows(10), f"{name}.jsonl")
            assert status == 201, body
    finally:
        server.stop()
