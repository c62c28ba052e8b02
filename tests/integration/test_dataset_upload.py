"""Uploading a dataset: streamed to disk, refused past the size limit, every row checked."""

import http.client
import json
import shutil

import pytest

from tests.helpers.server import make_server

GOOD = "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0}) + "\n"
               for i in range(20)).encode()


def upload(server, name: str, body, filename: str = "data.jsonl",
           ctype: str = "application/octet-stream", chunked: bool = False):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Content-Type": ctype}
    if chunked:
        body = iter(body)
    conn.request("POST", f"/api/datasets?name={name}&filename={filename}", body=body,
                 headers=headers, encode_chunked=chunked)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else None


def msg(body) -> str:
    detail = body["detail"]
    return detail if isinstance(detail, str) else detail[0]["msg"]


def test_upload_registers_a_checked_dataset(live_server):
    status, entry = upload(live_server, "mine", GOOD)
    assert status == 201, entry
    assert entry["id"] == "mine" and entry["rows"] == 20
    assert entry["path"].endswith("mine.jsonl")
    assert "mine" in [d["id"] for d in live_server.get("/api/datasets")]
    status, body = upload(live_server, "mine", GOOD)
    assert status == 409 and "exists" in msg(body)


@pytest.mark.parametrize("name, filename, body, status, words", [
    ("bad-row", "d.jsonl", GOOD + b'{"prompt": "x", "completion": "y", "label": "maybe"}\n',
     422, "row 21"),
    ("one-label", "d.jsonl", b'{"prompt": "x", "completion": "y", "label": true}\n', 422,
     "both labels"),
    ("../escape", "d.jsonl", GOOD, 422, "letters, digits"),
    ("txt", "d.txt", GOOD, 422, ".jsonl, .json, .csv or .parquet"),
    ("csv", "d.csv", GOOD, 422, "row 1: no known fields"),
    ("empty", "d.jsonl", b"", 422, "empty"),
])
def test_bad_uploads_are_refused_and_leave_nothing(live_server, name, filename, body, status,
                                                   words):
    before = sorted(p.name for p in (live_server.home / "datasets").iterdir())
    got, resp = upload(live_server, name, body, filename=filename)
    assert got == status and words in msg(resp), resp
    assert sorted(p.name for p in (live_server.home / "datasets").iterdir()) == before


def test_a_form_posted_body_from_another_page_is_refused(live_server):
    status, _ = upload(live_server, "csrf", GOOD, ctype="text/plain")
    assert status == 415


def test_the_size_limit_holds_while_streaming(demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    server = make_server(home, PROSPECT_UPLOAD_LIMIT_MB="1")
    server.start()
    try:
        big = GOOD * (2 * 2**20 // len(GOOD) + 1)
        status, body = upload(server, "big", big)  # Content-Length says it at once
        assert status == 413 and "1 MB" in msg(body)
        # Chunked, with no Content-Length: refused once the stream passes the limit.
        chunks = [GOOD * 1000] * 100  # ~50 MB offered in total
        status, body = upload(server, "big", chunks, chunked=True)
        assert status == 413 and "limit" in msg(body)
        assert not [p for p in (home / "datasets").iterdir() if p.name.startswith(".upload")]
        assert upload(server, "small", GOOD)[0] == 201  # and the server is still fine
    finally:
        server.stop()
