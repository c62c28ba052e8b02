"""The event protocol shared by every worker and the server (docs/design.md, "Event protocol").

A worker appends one JSON object per line to ``<run_dir>/events.jsonl``; the server tails the
file. This module is plain Python on purpose: the server imports it to parse lines, so it must
never pull in torch, mlx or anything heavy.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENT_TYPES = frozenset(
    {"status", "progress", "metric", "memory", "log", "checkpoint", "artifact", "error", "done",
     "tune"}
)
DONE_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

# Fields each type must carry (beyond seq, t, type). Extra fields are allowed.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "status": ("phase",),
    "progress": ("step", "total_steps"),
    "metric": ("step", "values"),
    "memory": ("rss_bytes",),
    "log": ("level", "message"),
    "checkpoint": ("step", "path"),
    "artifact": ("kind", "path"),
    "error": ("error_type", "message"),
    "done": ("status",),
    "tune": ("chosen", "tried", "message"),  # contract/tune.py: the auto-tuner's choice
}

EVENTS_FILE = "events.jsonl"
LOG_FILE = "worker.log"
CONFIG_FILE = "config.json"


class ProtocolError(ValueError):
    """A line in events.jsonl that is not a valid event."""


@dataclass(frozen=True)
class Event:
    seq: int
    t: float
    type: str
    data: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "t": self.t, "type": self.type, **self.data})


INT64_MAX = 2**63 - 1  # SQLite's INTEGER: a larger seq or step could not be stored
# A plausible event time: any clock this decade is well inside. A t outside would make a
# finished_at no datetime can hold, or one decades away from the run.
T_MIN, T_MAX = 946_684_800.0, 4_102_444_800.0  # 2000-01-01 and 2100-01-01 (UTC)
NAME_MAX = 200  # a metric name is stored in a VARCHAR(200)


def _reject_constant(name: str) -> float:
    raise ProtocolError(f"{name} is not a JSON number; write null")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to infinity
        raise ProtocolError(f"{text[:20]} is beyond a float; write null")
    return value


def _load(line: str) -> Any:
    try:
        return json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise ProtocolError(f"not JSON: {getattr(exc, 'msg', exc)}") from None


def _int(obj: dict, key: str, low: int, optional: bool = False) -> None:
    v = obj.get(key)
    if v is None and optional:
        return
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= INT64_MAX:
        raise ProtocolError(f"{key} must be an integer from {low} to 2**63-1, got {_show(v)}")


def _num(obj: dict, key: str) -> None:
    """An optional number (null when unknown: the writer sends NaN and infinity as null)."""
    v = obj.get(key)
    if v is None:
        return
    if not _is_number(v):
        raise ProtocolError(f"{key} must be a finite number or null, got {_show(v)}")
    obj[key] = float(v)  # stored in a REAL column: an int beyond 2**63 could not be bound


def _text(obj: dict, key: str, optional: bool = False, path: bool = False) -> None:
    v = obj.get(key)
    if v is None and optional:
        return
    if not isinstance(v, str) or (path and not v):
        raise ProtocolError(f"{key} must be {'a non-empty' if path else 'a'} string, "
                            f"got {_show(v)}")
    if path and "\0" in v:  # no file system takes it; Path() of it raises
        raise ProtocolError(f"{key} holds a NUL byte")


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_text(value: Any, depth: int = 0) -> None:
    """Every string must be storable: a lone surrogate (JSON allows "\\ud800") is not UTF-8,
    and SQLite refuses it (the writer replaces them, so only a foreign line has one)."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ProtocolError("text holds a lone surrogate (not UTF-8)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check_text(v)
    elif isinstance(value, list):
        for v in value:
            _check_text(v)


def _check_fields(etype: str, obj: dict[str, Any]) -> None:
    """The types and ranges of each type's fields (docs/design.md, "Event protocol")."""
    if etype == "status":
        _text(obj, "phase")
        _text(obj, "message", optional=True)
    elif etype == "progress":
        _int(obj, "step", 0)
        _int(obj, "total_steps", 0, optional=True)
        for key in ("epoch", "tokens_per_s", "eta_s"):
            _num(obj, key)
    elif etype == "metric":
        _int(obj, "step", 0)
        values = obj["values"]
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and 0 < len(k) <= NAME_MAX and _is_number(v)
            for k, v in values.items()
        ):
            raise ProtocolError("metric values must be a flat map of name to finite number")
        obj["values"] = {k: float(v) for k, v in values.items()}  # a REAL column
    elif etype == "memory":
        _int(obj, "rss_bytes", 0)
        for key in ("backend", "system"):
            if obj.get(key) is not None and not isinstance(obj[key], dict):
                raise ProtocolError(f"{key} must be an object or null, got {_show(obj[key])}")
    elif etype == "log":
        _text(obj, "level")
        _text(obj, "message")
    elif etype == "checkpoint":
        _int(obj, "step", 0)
        _text(obj, "path", path=True)
    elif etype == "artifact":
        _text(obj, "kind")
        _text(obj, "path", path=True)
    elif etype == "error":
        _text(obj, "error_type")
        _text(obj, "message")
        _text(obj, "hint", optional=True)
    elif etype == "tune":
        _text(obj, "message")
        if not isinstance(obj["chosen"], dict) or not isinstance(obj["tried"], list):
            raise ProtocolError("tune needs chosen (an object) and tried (a list)")
        for key in ("baseline_samples_per_s", "probe_s"):
            _num(obj, key)
    elif etype == "done":
        if obj["status"] not in DONE_STATUSES:
            raise ProtocolError(f"done status must be one of {sorted(DONE_STATUSES)}")
        if obj.get("summary") is not None and not isinstance(obj["summary"], dict):
            raise ProtocolError(f"summary must be an object or null, got "
                                f"{_show(obj['summary'])}")


def parse_event(line: str) -> Event:
    """Parse and check one line: every field's type and range, not only the JSON.

    Raises ProtocolError naming what is wrong, and nothing else, whatever the line holds:
    the server skips such a line and goes on (one job's bad file must stop nothing).
    """
    obj = _load(line)
    if not isinstance(obj, dict):
        raise ProtocolError("an event must be a JSON object")
    seq, t, etype = obj.pop("seq", None), obj.pop("t", None), obj.pop("type", None)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= INT64_MAX:
        raise ProtocolError(f"seq must be a positive integer below 2**63, got {_show(seq)}")
    if not _is_number(t) or not T_MIN <= t <= T_MAX:
        raise ProtocolError(f"t must be a unix time between 2000 and 2100, got {_show(t)}")
    if etype not in EVENT_TYPES:
        raise ProtocolError(f"unknown event type {_show(etype)}")
    missing = [f for f in REQUIRED_FIELDS[etype] if f not in obj]
    if missing:
        raise ProtocolError(f"{etype} event lacks {', '.join(missing)}")
    _check_fields(etype, obj)
    _check_text(obj)
    return Event(seq=seq, t=float(t), type=etype, data=obj)


def _is_number(v: Any) -> bool:
    """A finite number a float can hold (10**400 is an int Python reads, but no float)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def read_events(path: Path, offset: int = 0) -> tuple[list[Event | ProtocolError], int]:
    """Read complete lines from byte ``offset``; return the parsed events and the new offset.

    A last line without its newline is still being written: it is left for the next read.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    out: list[Event | ProtocolError] = []
    for raw in chunk[: end + 1].splitlines():
        if not raw.strip():
            continue
        try:
            out.append(parse_event(raw.decode("utf-8", errors="replace")))
        except ProtocolError as exc:
            out.append(exc)
    return out, offset + end + 1


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: send them as null so every reader can parse the line.
    A lone surrogate (a file name read with surrogateescape) becomes U+FFFD: the reader
    refuses text that is not UTF-8."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and not value.isascii():
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Appends events to events.jsonl; thread-safe; continues the seq of an existing file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seq = self._last_seq()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open

    def _last_seq(self) -> int:
        events, _ = read_events(self.path)
        seqs = [e.seq for e in events if isinstance(e, Event)]
        return max(seqs, default=0)

    @property
    def seq(self) -> int:
        return self._seq

    def emit(self, type: str, **fields: Any) -> int:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        if type == "metric":
            fields["values"] = {
                k: float(v)
                for k, v in fields["values"].items()
                if _is_number(v) and math.isfinite(float(v))
            }
        with self._lock:
            self._seq += 1
            line = json.dumps(
                {"seq": self._seq, "t": round(time.time(), 3), "type": type, **_clean(fields)}
            )
            self._file.write(line + "\n")
            self._file.flush()
            return self._seq

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
