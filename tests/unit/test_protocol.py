import json

import pytest

from contract.events import EventWriter, ProtocolError, parse_event, read_events

T = 1_764_000_000.0  # a plausible unix time (2025)


def line(**kw):
    return json.dumps({"seq": 1, "t": T, **kw})


def test_parse_valid_events():
    ev = parse_event(line(type="metric", step=3, values={"loss": 0.5, "kl": 0}))
    assert (ev.seq, ev.type, ev.data["values"]["loss"]) == (1, "metric", 0.5)
    assert parse_event(line(type="done", status="succeeded")).data["status"] == "succeeded"


@pytest.mark.parametrize("raw, problem", [
    ("{not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"t": T, "type": "log"}), "seq"),
    (json.dumps({"seq": 0, "t": T, "type": "log"}), "seq"),
    (json.dumps({"seq": True, "t": T, "type": "log"}), "seq"),
    (json.dumps({"seq": 1, "t": "now", "type": "log"}), "unix time"),
    (line(type="party"), "unknown event type"),
    (line(type="metric", step=1), "lacks values"),
    (line(type="metric", step=1, values={"loss": "low"}), "flat map"),
    (line(type="metric", step=1, values={"loss": {"a": 1}}), "flat map"),
    (line(type="done", status="great"), "done status"),
    (line(type="checkpoint", step=1), "lacks path"),
])
def test_parse_rejects_bad_lines(raw, problem):
    with pytest.raises(ProtocolError, match=problem):
        parse_event(raw)


def test_writer_appends_with_increasing_seq_and_continues_after_reopen(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit("status", phase="loading_model", message="")
    w.emit("metric", step=1, values={"loss": 1.5, "nan": float("nan"), "bad": "x"})
    w.close()
    w2 = EventWriter(path)  # a resumed worker continues the sequence
    assert w2.emit("done", status="succeeded", summary={"x": float("inf")}) == 3
    w2.close()
    events, offset = read_events(path)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[1].data["values"] == {"loss": 1.5}  # NaN and non-numbers are not sent
    assert events[2].data["summary"] == {"x": None}
    assert offset == path.stat().st_size


def test_read_events_leaves_a_partial_last_line_for_later(tmp_path):
    path = tmp_path / "events.jsonl"
    full = line(type="log", level="info", message="a") + "\n"
    path.write_text(full + '{"seq": 2, "t": 1764000000, "ty')
    events, offset = read_events(path)
    assert len(events) == 1 and offset == len(full)
    with open(path, "a") as f:
        f.write('pe": "log", "level": "info", "message": "b"}\n{garbage}\n')
    events, offset2 = read_events(path, offset)
    assert events[0].seq == 2 and isinstance(events[1], ProtocolError)
    assert offset2 == path.stat().st_size


def test_read_events_of_a_missing_file_is_empty(tmp_path):
    assert read_events(tmp_path / "nope.jsonl", 0) == ([], 0)


# Valid JSON, wrong types or ranges: each is a ProtocolError naming the field (issue 10:
# the first one stopped the supervisor and the server's start).
@pytest.mark.parametrize("raw, problem", [
    ('{"seq": 999999, "t": 1, "type": "metric", "step": null, "values": {"loss": 1}}',
     "unix time"),
    (line(type="metric", step=None, values={"loss": 1}), "step"),
    (line(type="metric", step=-1, values={"loss": 1}), "step"),
    (line(type="metric", step=2**63, values={"loss": 1}), "step"),
    (line(type="metric", step="3", values={"loss": 1}), "step"),
    (line(type="metric", step=1.5, values={"loss": 1}), "step"),
    (line(type="metric", step=1, values={"loss": True}), "flat map"),
    (line(type="metric", step=1, values={"": 1.0}), "flat map"),
    (line(type="metric", step=1, values={"loss": 10**400}), "flat map"),
    (line(type="metric", step=1, values=[1, 2]), "flat map"),
    (line(type="metric", step=1).replace("}", ', "values": {"loss": NaN}}'), "NaN"),
    (line(type="metric", step=1).replace("}", ', "values": {"loss": 1e999}}'), "beyond"),
    (json.dumps({"seq": 2**63, "t": T, "type": "log", "level": "i", "message": ""}), "seq"),
    (json.dumps({"seq": 1.0, "t": T, "type": "log", "level": "i", "message": ""}), "seq"),
    (json.dumps({"seq": 1, "t": 1e12, "type": "done", "status": "succeeded"}), "unix time"),
    (json.dumps({"seq": 1, "t": -T, "type": "done", "status": "succeeded"}), "unix time"),
    (json.dumps({"seq": 1, "t": True, "type": "done", "status": "succeeded"}), "unix time"),
    ('{"seq": 1, "t": Infinity, "type": "done", "status": "succeeded"}', "Infinity"),
    ('{"seq": 1, "t": ' + "9" * 5000 + ', "type": "done", "status": "succeeded"}', "not JSON"),
    ('{"seq": 1, "t": 1764000000, "type": "log", "level": "i", "message": '
     + "[" * 100_000 + "]" * 100_000 + "}", "not JSON"),
    (line(type="checkpoint", step=1, path=None), "path"),
    (line(type="checkpoint", step=1, path=""), "path"),
    (line(type="checkpoint", step=1, path="/runs/1/\u0000x"), "NUL"),
    (line(type="artifact", kind="adapter", path=5), "path"),
    (line(type="artifact", kind=None, path="/a"), "kind"),
    (line(type="status", phase={"a": 1}), "phase"),
    (line(type="status", phase="training", message=7), "message"),
    (line(type="progress", step=1, total_steps=-1), "total_steps"),
    (line(type="progress", step=1, total_steps=3, eta_s="soon"), "eta_s"),
    (line(type="progress", step=1, total_steps=3, epoch=10**400), "epoch"),
    (line(type="memory", rss_bytes=-1), "rss_bytes"),
    (line(type="memory", rss_bytes=1, backend=[1]), "backend"),
    (line(type="log", level="info", message=["a"]), "message"),
    (line(type="log", level="info", message="\ud800"), "surrogate"),
    (line(type="error", error_type="E", message="m", hint=3), "hint"),
    (line(type="done", status="succeeded", summary=[1]), "summary"),
    (line(type="done", status=None), "done status"),
])
def test_parse_rejects_ill_typed_fields(raw, problem):
    with pytest.raises(ProtocolError, match=problem):
        parse_event(raw)


def test_optional_fields_may_be_null_and_numbers_are_stored_as_floats():
    ev = parse_event(line(type="progress", step=0, total_steps=None, epoch=None, eta_s=3))
    assert ev.data["eta_s"] == 3.0 and isinstance(ev.data["eta_s"], float)
    ev = parse_event(line(type="metric", step=2, values={"loss": 1, "kl": 0.5}))
    assert ev.data["values"] == {"loss": 1.0, "kl": 0.5}
    assert all(isinstance(v, float) for v in ev.data["values"].values())


def test_the_writer_never_writes_what_the_reader_refuses(tmp_path):
    w = EventWriter(tmp_path / "events.jsonl")
    w.emit("log", level="info", message="bad name \udcff.txt")  # a surrogateescape'd name
    w.emit("metric", step=1, values={"loss": 10**400, "kl": 0.5})
    w.close()
    events, _ = read_events(tmp_path / "events.jsonl")
    assert all(not isinstance(e, ProtocolError) for e in events), events
    assert events[0].data["message"] == "bad name ?.txt"
    assert events[1].data["values"] == {"kl": 0.5}
