import json

import pytest

from workers.protocol import EventWriter, ProtocolError, parse_event, read_events


def line(**kw):
    return json.dumps({"seq": 1, "t": 1.0, **kw})


def test_parse_valid_events():
    ev = parse_event(line(type="metric", step=3, values={"loss": 0.5, "kl": 0}))
    assert (ev.seq, ev.type, ev.data["values"]["loss"]) == (1, "metric", 0.5)
    assert parse_event(line(type="done", status="succeeded")).data["status"] == "succeeded"


@pytest.mark.parametrize("raw, problem", [
    ("{not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"t": 1, "type": "log"}), "seq"),
    (json.dumps({"seq": 0, "t": 1, "type": "log"}), "seq"),
    (json.dumps({"seq": True, "t": 1, "type": "log"}), "seq"),
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
    path.write_text(full + '{"seq": 2, "t": 1, "ty')
    events, offset = read_events(path)
    assert len(events) == 1 and offset == len(full)
    with open(path, "a") as f:
        f.write('pe": "log", "level": "info", "message": "b"}\n{garbage}\n')
    events, offset2 = read_events(path, offset)
    assert events[0].seq == 2 and isinstance(events[1], ProtocolError)
    assert offset2 == path.stat().st_size


def test_read_events_of_a_missing_file_is_empty(tmp_path):
    assert read_events(tmp_path / "nope.jsonl", 0) == ([], 0)
