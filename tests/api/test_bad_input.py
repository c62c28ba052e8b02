"""Bad input is a 4xx naming the field, at the boundary, and is never stored: lone surrogates
in any JSON text, integers of hundreds of digits, over-long file names and NUL bytes in any
path, bodies past the size limit. What was stored before these checks still reads. In-process
(TestClient over a real home, no lifespan); one test runs `prospect jobs` against a server."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.config import Settings
from app.db import migrate
from app.main import create_app
from app.models import Event, Job, JobStatus
from contract.knobs import METHODS
from tests.helpers.data import form, home_with_a_finished_job

S = "\ud800"  # a lone surrogate: json.dumps writes it as the escape \ud800
LONG = "a" * 256  # one byte over the file system's limit for a name


@pytest.fixture()
def world(tmp_path):
    home = tmp_path / "home"
    app = home_with_a_finished_job(home)[0]
    return app, home


@pytest.fixture()
def client(world):
    return TestClient(world[0], base_url="http://127.0.0.1")


def job(**over) -> dict:
    return {"backend": "torch", "method": "kto", "model": "m", "dataset": "d",
            "params": {"max_steps": 1}, **over}


def send(client, method: str, path: str, body) -> object:
    """json.dumps keeps a lone surrogate as its \\ud800 escape, as a script's JSON would."""
    return client.request(method, path, content=json.dumps(body),
                          headers={"Content-Type": "application/json"})


def assert_422(r, field: str) -> None:
    assert r.status_code == 422, (field, r.status_code, r.text)
    assert r.json()["detail"][0]["field"] == field, r.text


SURROGATES = [
    ("POST", "/api/jobs", job(name=S), "name"),
    ("POST", "/api/jobs", job(model="m" + S), "model"),
    ("POST", "/api/jobs", job(dataset=S), "dataset"),
    ("POST", "/api/jobs", job(params={"max_steps": 1, "target_modules": ["q_proj", S]}),
     "params.target_modules.1"),
    ("POST", "/api/jobs", job(params={S: 1}), "params.\\ud800"),
    ("POST", "/api/jobs", job(method="fuse", dataset="", params={"adapter_path": S}),
     "params.adapter_path"),
    ("POST", "/api/plan", {"model": S}, "model"),
    ("POST", "/api/plan", {"model": "m", "params": {"target_modules": [S]}},
     "params.target_modules.0"),
    ("POST", "/api/datasets/register", {"path": "/x/" + S + ".jsonl"}, "path"),
    ("POST", "/api/datasets/register", {"hub_id": "a/b", "name": S}, "name"),
    ("POST", "/api/datasets/register", {"hub_id": "a/b", "split": S}, "split"),
    ("POST", "/api/adapters/1/fuse", {"name": S}, "name"),
    ("PATCH", "/api/jobs/1", {"notes": "fine " + S}, "notes"),
    ("PATCH", "/api/jobs/1", {"name": S}, "name"),
    ("PATCH", "/api/jobs/1", {"tags": ["ok", S]}, "tags.1"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), SURROGATES,
                         ids=[f"{m} {p} {f}" for m, p, _, f in SURROGATES])
def test_a_lone_surrogate_in_any_text_is_a_422_and_nothing_is_stored(world, client, method,
                                                                      path, body, field):
    before = client.get("/api/jobs").json()
    r = send(client, method, path, body)
    assert_422(r, field)
    assert "lone surrogate" in r.json()["detail"][0]["msg"]
    assert client.get("/api/jobs").json() == before  # no job made, none changed
    assert [d["id"] for d in client.get("/api/datasets").json()] == ["d"]


def test_what_was_stored_with_a_lone_surrogate_still_reads(world, client):
    """A job stored before the check (its params and an event are JSON columns, which kept
    the \\ud800 escape): the list, its page, the clone form and its events read as U+FFFD."""
    app, home = world
    with Session(app.state.engine) as s:
        s.add(Job(backend="torch", method="kto", model="m", dataset="d", name="bad",
                  status=JobStatus.failed, params={"target_modules": [S], S: "x"},
                  tags=["t" + S]))
        s.commit()
        s.add(Event(job_id=2, seq=1, t=1.0, type="log", data={"message": "m" + S}))
        s.commit()
    r = client.get("/api/jobs")
    assert r.status_code == 200, r.text
    stored = next(j for j in r.json() if j["name"] == "bad")
    assert stored["params"] == {"target_modules": ["\ufffd"], "\ufffd": "x"}
    assert stored["tags"] == ["t\ufffd"]
    for url in ("/api/jobs/2", "/jobs/2", "/jobs/new?from=2", "/", "/compare?ids=1,2",
                "/api/jobs/2/events?after=0"):
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text[-300:])


INT_KNOBS = sorted({(m.backend, m.method, k.name) for m in METHODS.values()
                    for k in m.knobs if k.type is int})


@pytest.mark.parametrize(("backend", "method", "knob"), INT_KNOBS)
@pytest.mark.parametrize("value", [10**309, -(10**400), 10**4000],
                         ids=["309-digits", "minus-401-digits", "4001-digits"])
def test_an_integer_of_hundreds_of_digits_is_a_422(client, backend, method, knob, value):
    r = client.post("/api/jobs", content=f'{{"backend": "{backend}", "method": "{method}", '
                    f'"model": "m", "dataset": "d", "params": {{"{knob}": {value}}}}}',
                    headers={"Content-Type": "application/json"})
    assert_422(r, f"params.{knob}")
    assert "digits" in r.json()["detail"][0]["msg"]


def path_cases(home):
    long_inside = str(home / LONG / "x.jsonl")
    nul_inside = str(home / "a\x00b")
    return [(long_inside, "bytes long"), (nul_inside, "NUL"),
            (str(home / ("é" * 128)), "bytes long"),  # 256 bytes in 128 characters
            ("/" + "a/" * 2100, "bytes long")]


def test_over_long_names_and_nul_bytes_in_any_path_are_422s(world, client):
    """One check for every path a person gives; each names its field."""
    _, home = world
    for value, said in path_cases(home):
        cases = [
            ("/api/jobs", job(model=value), "model"),
            ("/api/jobs", job(dataset=value), "dataset"),
            ("/api/jobs", job(method="fuse", dataset="", params={"adapter_path": value}),
             "params.adapter_path"),
            ("/api/plan", {"model": value}, "model"),
            ("/api/datasets/register", {"path": value}, "path"),
        ]
        for path, body, field in cases:
            r = send(client, "POST", path, body)
            assert_422(r, field)
            if len(value) <= 1000 and not (field in ("model", "dataset") and "\x00" in value):
                # (JobCreate refuses control characters and text over 1000 characters itself)
                assert said in r.json()["detail"][0]["msg"], (path, field, r.text)
        r = client.get("/api/datasets/d/tokens", params={"model": value})
        assert_422(r, "model")
        r = client.get("/api/jobs/1/artifacts/download", params={"path": value[1:]})
        assert r.status_code == 422, r.text  # (over 1000 characters: the query's own limit)
        if len(value) <= 1000:
            assert said in r.json()["detail"][0]["msg"], r.text
        r = client.post("/jobs/new", data=form(model_text=value,
                                                csrf_token=world[0].state.csrf_token))
        assert r.status_code == 422 and "Internal" not in r.text
    assert [j["id"] for j in client.get("/api/jobs").json()] == [1]


def test_request_bodies_past_the_limit_are_413s_but_uploads_are_not(tmp_path):
    home = tmp_path / "home"
    app = create_app(Settings(home=home, body_limit_kib=4))
    migrate(app.state.engine)
    client = TestClient(app, base_url="http://127.0.0.1")
    big = json.dumps(job(name="x", notes="y" * 5000))
    r = client.post("/api/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "4 KiB" in r.json()["detail"], r.text

    def chunks():  # no Content-Length: the limit counts what arrives
        for _ in range(10):
            yield b" " * 1024

    r = client.post("/api/plan", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    r = client.post("/api/plan", content=json.dumps({"model": "nope"}),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422  # a small body reaches the route as before
    rows = "".join(json.dumps({"prompt": f"q{i}" + "p" * 200, "completion": "a",
                               "label": i % 2 == 0}) + "\n" for i in range(100))
    r = client.post("/api/datasets?name=big&filename=big.jsonl", content=rows.encode(),
                    headers={"Content-Type": "application/octet-stream"})
    assert len(rows) > 4 * 1024 and r.status_code == 201, r.text


def test_a_query_parameter_named_path_keeps_its_name_in_the_error(client):
    """Only the location's first part ("query", "body", …) is dropped from the field name."""
    r = client.get("/api/jobs/1/artifacts/download", params={"path": "a" * 1001})
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "path"
