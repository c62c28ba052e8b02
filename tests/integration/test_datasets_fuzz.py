"""hypothesis junk through the real server: whatever file is uploaded, the answer is a 201 or
a 4xx naming the problem (with row numbers where there are rows), never a 500, and a refused
upload leaves nothing behind."""

from __future__ import annotations

import csv
import io
import itertools
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.server import make_server, upload

FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
KEYS = ["prompt", "completion", "label", "chosen", "rejected", "messages", "text", "role",
        "content"]
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=12) | st.sampled_from(["user", "assistant", "bot", "", "true"])
           # what once gave 500s elsewhere: lone surrogates, NULs, huge integers
           | st.sampled_from(["\ud800", "a\udfff", "\x00", 10**309, -(10**400)]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4), max_leaves=20)
rows = st.fixed_dictionaries({}, optional={k: values for k in KEYS[:7]}) | values
names = (f"fuzz{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    srv = make_server(home)
    srv.start()
    yield srv
    srv.stop()


def check(server, body: bytes, filename: str) -> None:
    status, resp = upload(server, next(names), body, filename)
    assert status in (201, 413, 422), (status, resp)
    if status == 422:
        detail = resp["detail"][0]
        assert detail["msg"] and detail["field"] in ("file", "name", "filename"), detail
        for p in detail.get("problems", []):
            assert p["message"] and (p["row"] is None or p["row"] >= 1), p
    assert not [p for p in (server.home / "datasets").iterdir()
                if p.name.startswith(".upload")]


@FUZZ
@given(data=st.binary(min_size=1, max_size=600),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_junk_bytes(server, data, suffix):
    check(server, data, "junk" + suffix)


@FUZZ
@given(items=st.lists(rows, min_size=1, max_size=6), as_list=st.booleans())
def test_junk_json_rows(server, items, as_list):
    text = json.dumps(items) if as_list else "\n".join(json.dumps(i) for i in items)
    check(server, text.encode("utf-8", "surrogatepass"), "rows.json" if as_list else "rows.jsonl")


@FUZZ
@given(header=st.lists(st.sampled_from(KEYS) | st.text(max_size=5), min_size=1, max_size=5),
       cells=st.lists(st.lists(st.text(max_size=10) | st.sampled_from(
           ["true", "false", "[]", '[{"role": "user", "content": "x"}]', "1"]), max_size=6),
           min_size=1, max_size=6))
def test_junk_csv(server, header, cells):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(cells)
    check(server, out.getvalue().encode("utf-8", "surrogatepass"), "rows.csv")


@settings(max_examples=20, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=st.lists(st.fixed_dictionaries({}, optional={
    "prompt": st.text(max_size=8) | st.none() | st.binary(max_size=6),
    "completion": st.text(max_size=8) | st.none(),
    "label": st.booleans() | st.none(),
    "chosen": st.text(max_size=8), "rejected": st.text(max_size=8)}), min_size=1, max_size=6))
def test_junk_parquet_tables(server, items):
    """Real Parquet files whose columns are nearly right: nulls, bytes, missing columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from hypothesis import assume

    try:
        table = pa.Table.from_pylist(items)
    except (pa.ArrowException, ValueError, TypeError):
        assume(False)
    out = io.BytesIO()
    pq.write_table(table, out)
    check(server, out.getvalue(), "rows.parquet")
