"""GETs that write (the MLX export, token lengths) through a real server: identical requests at
once are served once and alike, what stays on disk is bounded, no temporary is left, and
another site cannot make them."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.server import make_server

PARALLEL = 6


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("cache-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    python = home / "counting-python"  # notes each subprocess the server starts, then runs it
    python.write_text(f'#!/bin/sh\necho "$*" >> {home}/started.log\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    srv = make_server(home, PROSPECT_EXPORT_CACHE_ENTRIES="3", PROSPECT_TOKEN_CACHE_ENTRIES="1",
                      PROSPECT_PYTHON=str(python))
    srv.start()
    # Big enough that an export or a count takes a while: requests at once overlap.
    for name, count in (("big", 8000), ("mid", 1500)):
        rows = home / f"{name}.jsonl"
        rows.write_text("".join(json.dumps({
            "prompt": f"Question {i}: " + "why is the sky blue? " * 6,
            "completion": "Because of Rayleigh scattering. " * 4, "label": i % 3 != 0}) + "\n"
            for i in range(count)))
        status, body = srv.request("POST", "/api/datasets/register", {"path": str(rows),
                                                                      "name": name})
        assert status == 201, body
    yield srv
    srv.stop()


def fetch(server, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def together(server, path: str) -> list[tuple[int, bytes]]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda _: fetch(server, path), range(PARALLEL)))


def exports(server) -> list[str]:
    return sorted(p.name for p in (server.home / "datasets").glob("*/mlx-*"))


def leftovers(server) -> list[str]:
    root = server.home / "datasets"
    return [str(p) for p in [*root.glob(".upload-*"), *root.glob("*/.*")]]


def test_identical_exports_at_once_all_succeed_with_the_same_bytes(server):
    answers = together(server, "/api/datasets/big/mlx?seed=11")
    assert [status for status, _ in answers] == [200] * PARALLEL, answers[0][1][:300]
    assert len({body for _, body in answers}) == 1
    names = zipfile.ZipFile(io.BytesIO(answers[0][1])).namelist()
    assert names == ["big/train.jsonl", "big/valid.jsonl"]
    assert "mlx-chat-11" in exports(server) and leftovers(server) == []


def test_many_seeds_leave_at_most_the_bound_and_an_evicted_one_comes_back_alike(server):
    first = fetch(server, "/api/datasets/demo-kto/mlx?seed=100&file=train")
    assert first[0] == 200
    for seed in range(101, 110):
        status, body = fetch(server, f"/api/datasets/demo-kto/mlx?seed={seed}&style=text")
        assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).testzip() is None
        assert len(exports(server)) <= 3, exports(server)
    assert exports(server) == ["mlx-text-107", "mlx-text-108", "mlx-text-109"]  # the newest
    again = fetch(server, "/api/datasets/demo-kto/mlx?seed=100&file=train")
    assert again == first  # the split is reproducible: made again, the same rows
    assert len(exports(server)) == 3 and leftovers(server) == []


def test_another_site_cannot_make_an_export(server):
    before = exports(server)
    for site in ("cross-site", "same-site"):
        status, body = fetch(server, "/api/datasets/demo-kto/mlx?seed=555", {
            "Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"})
        assert status == 403 and b"refused" in body
    assert exports(server) == before


def test_identical_token_counts_at_once_run_once_and_the_tables_are_bounded(server):
    answers = together(server, "/api/datasets/mid/tokens?model=tiny-demo&max_length=64")
    assert [status for status, _ in answers] == [200] * PARALLEL, answers[0][1][:300]
    assert len({body for _, body in answers}) == 1
    started = (server.home / "started.log").read_text().splitlines()
    assert len([line for line in started if "dataset_tool tokens" in line]) == 1, started
    assert json.loads(answers[0][1])["rows"] > 0
    tables = sorted((server.home / "datasets").glob("*/tokens-*.json"))
    assert len(tables) == 1 and leftovers(server) == []
    status, _ = fetch(server, "/api/datasets/demo-kto/tokens?model=tiny-demo")
    assert status == 200
    tables = sorted((server.home / "datasets").glob("*/tokens-*.json"))
    assert [t.parent.name for t in tables] == ["demo-kto"]  # the bound is 1: the older went
