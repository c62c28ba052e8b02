"""The event protocol shared by every worker and the server (see DESIGN.md, "Event protocol").

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
    {"status", "progress", "metric", "memory", "log", "checkpoint", "artifact", "error", "done"}
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


def parse_event(line: str) -> Event:
    """Parse and check one line; raise ProtocolError naming what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("an event must be a JSON object")
    seq, t, etype = obj.pop("seq", None), obj.pop("t", None), obj.pop("type", None)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ProtocolError(f"seq must be a positive integer, got {seq!r}")
    if not isinstance(t, int | float) or isinstance(t, bool):
        raise ProtocolError(f"t must be a unix time, got {t!r}")
    if etype not in EVENT_TYPES:
        raise ProtocolError(f"unknown event type {etype!r}")
    missing = [f for f in REQUIRED_FIELDS[etype] if f not in obj]
    if missing:
        raise ProtocolError(f"{etype} event lacks {', '.join(missing)}")
    if etype == "metric":
        values = obj["values"]
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and _is_number(v) for k, v in values.items()
        ):
            raise ProtocolError("metric values must be a flat map of name to number")
    if etype == "done" and obj["status"] not in DONE_STATUSES:
        raise ProtocolError(f"done status must be one of {sorted(DONE_STATUSES)}")
    return Event(seq=seq, t=float(t), type=etype, data=obj)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


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
    """JSON has no NaN or infinity: send them as null so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
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
