"""Text in an inference worker's answer: stop strings held back and cut (``StopScanner``),
token ids turned into text without ever splitting a UTF-8 character (``IncrementalDecoder``),
and one whole answer from a backend's stream (``produce``: max_tokens fitted to the context,
stop strings applied, timed), which the serving loop (workers/serve.py) and the generate job
(workers/generate.py) share. Plain Python."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` may be the start of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class StopScanner:
    """Text in, text safe to send out: never a stop string, nor anything after one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def push(self, text: str) -> str:
        if self.hit:
            return ""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending, self.hit = self.pending[:min(found)], "", True
            return out
        keep = held_back(self.pending, self.stops)
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.hit else self.pending), ""
        return out


class IncrementalDecoder:
    """Token ids in, new text out, never half a character: text is sent once the decoded
    tail no longer ends in U+FFFD (a UTF-8 sequence cut between tokens). Decodes a short
    window (from the previous emission) so a tokenizer that drops a leading space stays right."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # start of the window
        self.read = 0  # ids up to here have been turned into text

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        before = self.decode(self.ids[self.prefix:self.read])
        after = self.decode(self.ids[self.prefix:])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]


class RequestError(Exception):
    """A request that cannot be served, with the HTTP status the server should answer."""

    def __init__(self, status: int, error_type: str, message: str, hint: str = ""):
        super().__init__(message)
        self.status, self.error_type, self.message, self.hint = status, error_type, message, hint


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None


def rate(tokens: int, first: float | None, last: float | None, seconds: float) -> float:
    """Tokens per second of the decoding: between the first token and the last."""
    if tokens > 1 and first is not None and last is not None and last > first:
        return (tokens - 1) / (last - first)
    return tokens / seconds if seconds > 0 else 0.0


# --- one answer: the serving loop's (workers/serve.py) and the generate job's ----------
def fit_context(n_prompt: int, limit: int, sampling: Sampling) -> Sampling:
    """``sampling`` with max_tokens cut to the room the context leaves after the prompt;
    RequestError(422, "context_length") when the prompt alone fills it."""
    if n_prompt >= limit:
        raise RequestError(
            422, "context_length",
            f"the prompt is {n_prompt} tokens; this model's context is {limit} tokens, "
            "which leaves no room for an answer",
            "Shorten the conversation or the system prompt, or clear the chat.")
    return Sampling(min(sampling.max_tokens, limit - n_prompt), sampling.temperature,
                    sampling.top_p, sampling.seed)


@dataclass(frozen=True)
class Produced:
    """One finished answer: finish_reason "stop" (end of sequence or a stop string),
    "cancelled" or "length"; the tokens the model produced and the timing."""

    text: str
    finish_reason: str
    completion_tokens: int
    ttft_s: float
    tokens_per_s: float
    seconds: float


def produce(backend: Any, ids: list[int], adapter: str | None, sampling: Sampling,
            stops: list[str], cancelled: Callable[[], bool],
            send: Callable[[str, list[int]], None] | None = None,
            t0: float | None = None) -> Produced:
    """Generate one answer to the prompt ``ids`` with ``backend`` (a workers/serve.py
    Backend; adapter attached already, ``sampling`` fitted to the context): stop strings
    held back and cut, ``send(text, token ids)`` called for each piece safe to pass on, the
    whole text returned with the counts and timing.
    ``t0``: when the request began (default: now)."""
    t0 = time.perf_counter() if t0 is None else t0
    scanner = StopScanner(stops)
    pieces: list[str] = []
    tally: dict[str, Any] = {"produced": 0, "waiting": [], "first": None, "last": None}

    def emit(text: str, new_ids: list[int]) -> None:
        if scanner.hit:
            return  # the token in hand after a stop string: not part of the answer
        tally["last"] = time.perf_counter()
        tally["first"] = tally["first"] or tally["last"]
        tally["produced"] += len(new_ids)
        tally["waiting"] += new_ids
        out = scanner.push(text)
        if out:
            pieces.append(out)
            if send is not None:
                send(out, tally["waiting"])
            tally["waiting"] = []

    reason = backend.stream(ids, adapter, sampling, lambda: cancelled() or scanner.hit, emit)
    produced, waiting, first, last = (tally[k] for k in ("produced", "waiting", "first",
                                                          "last"))
    tail = scanner.flush()
    if tail:
        pieces.append(tail)
        if send is not None:
            send(tail, waiting)
    if scanner.hit or reason == "stop":  # a stop string, or the end of the sequence
        reason = "stop"
    elif cancelled():
        reason = "cancelled"
    else:
        reason = "length"
    seconds = time.perf_counter() - t0
    return Produced("".join(pieces), reason, produced,
                    round((first or time.perf_counter()) - t0, 6),
                    round(rate(produced, first, last, seconds), 3), round(seconds, 6))
