"""Text in an inference worker's answer: stop strings held back and cut (``StopScanner``),
and token ids turned into text without ever splitting a UTF-8 character
(``IncrementalDecoder``). Plain Python: workers/serve.py and the backends use them."""

from __future__ import annotations

from collections.abc import Callable


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
