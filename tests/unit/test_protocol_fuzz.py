"""hypothesis fuzz of the event protocol: ill-typed events are ProtocolErrors, never a crash.

Lines that look nearly right (each field of each type, with values of the wrong type or out
of range, huge integers, NaN, lone surrogates, NUL bytes) must parse into a valid Event or
raise ProtocolError; and ingesting a file of them never raises, advances the offset to the
end, and leaves a job every reader can serve.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from app.db import make_engine, migrate
from app.jobs.ingest import ingest
from app.jobs.metrics import columnar
from app.jobs.series import series
from app.models import Job, JobPublic, JobStatus
from contract.events import (
    EVENT_TYPES,
    INT64_MAX,
    REQUIRED_FIELDS,
    T_MAX,
    T_MIN,
    Event,
    ProtocolError,
    parse_event,
)

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
T = 1_764_000_000.0

hostile_text = st.sampled_from(["", "\ud800", "a\udcffb", "/runs/1/\x00x", "x" * 300,
                                "training", "/tmp/ckpt"]) | st.text(max_size=12)
huge = st.sampled_from([2**63, 2**63 - 1, -(2**63) - 1, 2**64, 10**30, 10**400, -1, 0])
numbers = (st.integers(-(2**70), 2**70) | huge
           | st.floats(allow_nan=True, allow_infinity=True))
scalars = st.none() | st.booleans() | numbers | hostile_text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(hostile_text, inner, max_size=3), max_leaves=10)
FIELDS = sorted({f for fs in REQUIRED_FIELDS.values() for f in fs}
                | {"message", "epoch", "tokens_per_s", "eta_s", "hint", "summary",
                   "backend", "system"})
# Per field, values of roughly the right type first, so the fuzz reaches every check.
near = {
    "seq": st.integers(1, 10) | huge | scalars,
    "t": st.floats(T_MIN - 10, T_MAX + 10) | st.just(T) | scalars,
    "type": st.sampled_from(sorted(EVENT_TYPES)) | scalars,
    "step": st.integers(0, 10) | huge | scalars,
    "total_steps": st.integers(0, 10) | huge | scalars,
    "values": st.dictionaries(hostile_text, numbers | scalars, max_size=4) | values,
    "status": st.sampled_from(["succeeded", "failed", "cancelled", "done"]) | scalars,
    "summary": st.dictionaries(hostile_text, scalars, max_size=3) | values,
}


def event_of(etype: str):
    """An event of ``etype``: a valid header, its required fields present (mostly), each
    field's value nearly right or hostile, so the fuzz reaches every field's check."""
    required = {f: near.get(f, values) for f in REQUIRED_FIELDS[etype]}
    return st.fixed_dictionaries(
        {"seq": st.integers(1, 10), "t": st.just(T), "type": st.just(etype), **required},
        optional={f: near.get(f, values) for f in FIELDS if f not in required})


events = st.sampled_from(sorted(EVENT_TYPES)).flatmap(event_of) | st.fixed_dictionaries(
    {"seq": near["seq"], "t": near["t"], "type": near["type"]},
    optional={f: near.get(f, values) for f in FIELDS})
# What json.dumps cannot write: integers of 5000 digits, nesting past the recursion limit.
raw_tokens = st.sampled_from(["9" * 5000, "1e999", "-Infinity", "NaN", "[" * 5000 + "]" * 5000])


def check_valid(ev: Event) -> None:
    assert 1 <= ev.seq <= INT64_MAX and T_MIN <= ev.t <= T_MAX and ev.type in EVENT_TYPES
    json.dumps(ev.data, allow_nan=False).encode("utf-8")  # storable and servable as is
    for key in ("step", "total_steps", "rss_bytes"):
        if ev.data.get(key) is not None:
            assert isinstance(ev.data[key], int) and 0 <= ev.data[key] <= INT64_MAX
    if ev.type == "metric":
        assert all(isinstance(v, float) and math.isfinite(v) for v in ev.data["values"].values())
    for key in ("path", "phase", "message", "level", "kind", "error_type"):
        if key in ev.data and key in REQUIRED_FIELDS[ev.type]:
            assert isinstance(ev.data[key], str)


def parse_or_protocol_error(line: str) -> Event | None:
    try:
        ev = parse_event(line)
    except ProtocolError as exc:
        assert str(exc)
        return None
    check_valid(ev)
    return ev


@FUZZ
@given(obj=events)
def test_ill_typed_events_parse_or_are_protocol_errors(obj):
    parse_or_protocol_error(json.dumps(obj))


@FUZZ
@given(obj=events, field=st.sampled_from(["seq", "t", "step", "values", "path", "message"]),
       token=raw_tokens)
def test_numbers_and_nesting_json_dumps_cannot_write_are_protocol_errors(obj, field, token):
    obj = {**obj, field: "@@"}
    parse_or_protocol_error(json.dumps(obj).replace('"@@"', token))


@pytest.fixture(scope="module")
def engine():
    engine = make_engine(":memory:")
    migrate(engine)
    return engine


@settings(FUZZ, max_examples=100)
@given(objs=st.lists(events, min_size=1, max_size=6), start=st.sampled_from(
    [JobStatus.starting, JobStatus.running]))
def test_ingesting_ill_typed_events_never_raises(engine, tmp_path_factory, objs, start):
    run_dir = tmp_path_factory.mktemp("run")
    text = "".join(json.dumps(o) + "\n" for o in objs)
    (run_dir / "events.jsonl").write_text(text, encoding="utf-8", errors="surrogatepass")
    with Session(engine) as s:
        job = Job(backend="torch", method="kto", model="m", dataset="d", run_dir=str(run_dir),
                  status=start)
        s.add(job)
        s.commit()
        s.refresh(job)
        ingest(s, job)  # never raises
        assert job.events_offset == (run_dir / "events.jsonl").stat().st_size
        # ... and what it stored, every reader serves
        JobPublic.model_validate(job).model_dump_json()
        columnar(s, job.id, None, None, None)
        series(s, job.id, "memory", 100)
        series(s, job.id, "progress", 100)
