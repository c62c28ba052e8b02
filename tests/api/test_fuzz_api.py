"""hypothesis through the API with the input classes that once gave 500s: lone surrogates,
NUL bytes and over-long file names in every text field, integers of hundreds of digits in
every number. Every answer is a 2xx or a well-formed 4xx, never a 5xx (TestClient raises on
any server error), and nothing stored breaks a reader afterwards. In-process, no lifespan:
jobs made here stay queued."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.knobs import METHODS
from tests.helpers.data import home_with_a_finished_job

FUZZ = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
EXAMPLES: Counter[str] = Counter()  # per endpoint, printed at the end (-s)

lone = st.sampled_from(["\ud800", "\udfff", "\udc80", "\udbff\udbff"])
long_name = st.integers(256, 1200).map(lambda n: "a" * n)


def _around(inner):
    return st.tuples(st.text(max_size=4), inner, st.text(max_size=4)).map("".join)


# Plain text that URLs and forms can carry too; JSON adds the lone surrogates.
url_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["m", "d", "tiny-demo", "{model}", "{data}", "{home}", "~", "/", "..",
                     "Qwen/Qwen2-0.5B", "a/..", "train"]),
    _around(st.just("\x00")),
    st.tuples(st.sampled_from(["{home}", "/tmp", "~", ""]), long_name).map("/".join),
    st.integers(0, 30).map(lambda n: "{home}/" + "x/" * n + "y" * 256),
    st.just("/" + "b/" * 2100),  # over PATH_MAX in names that are each short
)
json_text = st.one_of(url_text, _around(lone))
huge = st.one_of(st.integers(-(10**4000), 10**4000),
                 st.sampled_from([10**309, -(10**309), 2**63, 2**64, 10**4000]))
numbers = st.one_of(huge, st.integers(-5, 5), st.floats(allow_nan=False) | st.just(1e308))
values = st.one_of(json_text, numbers, st.booleans(), st.none(),
                   st.lists(json_text, max_size=3))
knob_names = st.sampled_from(sorted({k.name for m in METHODS.values() for k in m.knobs}))
params = st.dictionaries(knob_names | json_text, values, max_size=5)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-api-home")
    app, model, data, adapter = home_with_a_finished_job(home)
    (adapter / "adapter_config.json").write_text("{}")
    where = {"{model}": str(model), "{data}": str(data), "{home}": str(home)}
    yield TestClient(app, base_url="http://127.0.0.1"), where
    print("\nhostile API examples:", dict(EXAMPLES), "total", sum(EXAMPLES.values()))


def fill(value, where: dict[str, str]):
    if isinstance(value, str):
        for key, real in where.items():
            value = value.replace(key, real)
        return value
    if isinstance(value, list):
        return [fill(v, where) for v in value]
    if isinstance(value, dict):
        return {fill(k, where): fill(v, where) for k, v in value.items()}
    return value


def check(api, label: str, method: str, path: str, body=None, query=None, form=None):
    client, where = api
    EXAMPLES[label] += 1
    kwargs = {}
    if body is not None:
        kwargs = {"content": json.dumps(fill(body, where)),
                  "headers": {"Content-Type": "application/json"}}
    elif form is not None:
        kwargs = {"data": fill(form, where)}
    r = client.request(method, path, params=fill(query, where) if query else None, **kwargs)
    assert r.status_code < 500, (label, r.status_code, r.text[:300])
    if r.status_code >= 400 and r.headers["content-type"].startswith("application/json"):
        detail = r.json()["detail"]
        assert detail and (isinstance(detail, str) or all(
            {"loc", "msg", "type"} <= set(d) for d in detail)), detail
    readers = client.get("/api/jobs?limit=1000")
    assert readers.status_code == 200  # whatever was stored, the list still reads
    return r


job_bodies = st.fixed_dictionaries({}, optional={
    "name": json_text, "backend": st.sampled_from(["torch", "mlx"]) | json_text,
    "method": st.sampled_from(["kto", "sft", "fuse"]) | json_text,
    "model": st.sampled_from(["m", "{model}"]) | json_text,
    "dataset": st.sampled_from(["d", "{data}"]) | json_text, "params": params,
    "force": st.booleans()})


@FUZZ
@given(body=job_bodies)
def test_job_and_plan_bodies(api, body):
    r = check(api, "POST /api/jobs", "POST", "/api/jobs", body)
    if r.status_code == 201:  # a job made from hostile text holds none of it
        stored = json.dumps(r.json())
        assert "\\ud8" not in stored and "\\udc" not in stored and "\\u0000" not in stored
    check(api, "POST /api/plan", "POST", "/api/plan", {"model": "m", **body})


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={
    "name": json_text, "path": json_text | st.just("{data}"),
    "hub_id": json_text | st.just("a/b"), "split": json_text}))
def test_dataset_register_bodies(api, body):
    check(api, "POST /api/datasets/register", "POST", "/api/datasets/register", body)


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={
    "name": json_text, "notes": json_text, "tags": st.lists(json_text, max_size=4)}),
    fuse=st.fixed_dictionaries({}, optional={"name": json_text}))
def test_job_edits_and_fuse_bodies(api, body, fuse):
    check(api, "PATCH /api/jobs/{id}", "PATCH", "/api/jobs/1", body)
    check(api, "POST /api/adapters/{id}/fuse", "POST", "/api/adapters/1/fuse", fuse)


@FUZZ
@given(model=url_text, length=numbers.map(str) | url_text, path=url_text,
       method=st.sampled_from(["torch/kto", "mlx/sft"]) | url_text)
def test_paths_and_numbers_in_queries_and_forms(api, model, length, path, method):
    check(api, "GET /api/datasets/{id}/tokens", "GET", "/api/datasets/d/tokens",
          query={"model": model, "max_length": length})
    check(api, "GET /api/jobs/{id}/artifacts/download", "GET",
          "/api/jobs/1/artifacts/download", query={"path": path})
    check(api, "GET /jobs/new", "GET", "/jobs/new", query={"model": model})
    client, _ = api
    check(api, "POST /jobs/new", "POST", "/jobs/new", form={
        "csrf_token": client.app.state.csrf_token, "method": method, "model_text": model,
        "dataset_text": path, "params.max_steps": length})
