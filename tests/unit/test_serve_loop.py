"""The loop every inference worker shares (workers/serve.py), over a fake backend: stop strings
held back and cut, incremental detokenization, the parent-death choice, request checks, the
replies of contract/inference.py; and as a real process (python -m tests.helpers.inference_worker):
stdout carries protocol lines only, stdin EOF and shutdown end it, so does its parent's death."""

from __future__ import annotations

import io
import json

import pytest

from contract import inference as proto
from tests.helpers.inference_worker import FAKE, FakeBackend, InferenceWorker, wait_gone
from workers.serve import (
    Output,
    RequestError,
    Worker,
    context_length,
    parent_watch_mode,
    parse_request,
)
from workers.serve_text import IncrementalDecoder, StopScanner, held_back


# --- stop strings ---------------------------------------------------------------------------
def scan(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    scanner = StopScanner(stops)
    out = [scanner.push(p) for p in pieces]
    return [*out, scanner.flush()], scanner.hit


def test_text_that_may_start_a_stop_string_is_held_back():
    assert held_back("Hello wo", ["world"]) == 2
    assert held_back("Hello w", ["world", "xyz"]) == 1
    assert held_back("Hello", ["world"]) == 0
    assert held_back("ab", ["abc", "bcd"]) == 2
    out, hit = scan(["Hello wo", "nderful"], ["world"])
    assert out == ["Hello ", "wonderful", ""] and not hit


def test_a_stop_string_split_over_pieces_cuts_the_answer_before_it():
    out, hit = scan(["Paris is th", "e cap", "ital of", " France"], ["capital"])
    assert "".join(out) == "Paris is the " and hit
    assert out[-2:] == ["", ""]  # nothing after the stop string, nor at the end


def test_the_earliest_stop_string_wins_and_empty_ones_are_ignored():
    out, hit = scan(["one. two! three"], ["", "!", "."])
    assert out == ["one", ""] and hit
    out, hit = scan(["a\n", "\nb"], ["\n\n"])
    assert "".join(out) == "a" and hit


def test_without_a_stop_string_everything_comes_out():
    pieces = ["Sure", "! The ", "answer", " is 4."]
    out, hit = scan(pieces, ["STOP"])
    assert "".join(out) == "".join(pieces) and not hit
    assert scan(pieces, [])[0][:4] == pieces  # no stop strings: no delay


# --- detokenization -------------------------------------------------------------------------
def test_half_a_utf8_character_is_never_emitted():
    data = "Grüße, 東京 🙂!".encode()
    decoder = IncrementalDecoder(lambda ids: bytes(ids).decode(errors="replace"))
    out = [decoder.push([b]) for b in data]
    out.append(decoder.flush())
    assert "".join(out) == "Grüße, 東京 🙂!"
    assert not any("\ufffd" in piece for piece in out)


def test_a_broken_sequence_at_the_end_is_flushed_as_the_library_decodes_it():
    decoder = IncrementalDecoder(lambda ids: bytes(ids).decode(errors="replace"))
    assert decoder.push(list(b"ok")) == "ok"
    assert decoder.push([0xE6]) == ""
    assert decoder.flush() == "\ufffd"


# --- pure choices ---------------------------------------------------------------------------
def test_parent_watch_mode_by_platform():
    assert parent_watch_mode("Linux", has_prctl=True) == "prctl"
    assert parent_watch_mode("Linux", has_prctl=False) == "poll"
    assert parent_watch_mode("Darwin", has_prctl=False) == "poll"
    assert parent_watch_mode("Windows", has_prctl=False) == "poll"


def test_context_length_takes_the_smaller_sane_limit():
    assert context_length(4096, 2048) == 2048
    assert context_length(4096, int(1e30)) == 4096  # "no limit" in a tokenizer config
    assert context_length(None, 512) == 512
    assert context_length(None, None) == 2048


@pytest.mark.parametrize("change, says", [
    ({"messages": []}, "messages"), ({"messages": [{"role": "user"}]}, "messages"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"seed": 1.5}, "seed"),
    ({"stop": ["a"] * 5}, "stop"), ({"stop": "x"}, "stop"), ({"adapter": 3}, "adapter"),
])
def test_malformed_requests_are_400(change, says):
    msg = {**proto.generate_request("r", [{"role": "user", "content": "hi"}]), **change}
    with pytest.raises(RequestError) as caught:
        parse_request(msg)
    assert caught.value.status == 400 and says in caught.value.message


# --- the replies, in process ----------------------------------------------------------------
class Replies(Output):
    def __init__(self):
        super().__init__(io.BytesIO())
        self.sent: list[dict] = []
        self.on_send = None

    def send(self, message):
        self.sent.append(json.loads(proto.encode(message)))
        if self.on_send:
            self.on_send(message)


@pytest.fixture()
def loop():
    out = Replies()
    return Worker(FakeBackend(), "fake", out), out


def ask(worker, id="r", content="hi", **fields):
    msg = {**proto.generate_request(id, [{"role": "user", "content": content}],
                                    temperature=0.0), **fields}
    worker.out.sent.clear()
    worker.handle(msg)
    return worker.out.sent


def test_a_generation_answers_start_tokens_done(loop):
    worker, _ = loop
    sent = ask(worker, max_tokens=9)
    assert [m["type"] for m in sent] == ["start"] + ["token"] * 9 + ["done"]
    assert sent[0] == {"type": "start", "id": "r", "prompt_tokens": 2}
    assert "".join(m["text"] for m in sent[1:-1]) == "The quick"
    done = sent[-1]
    assert done["finish_reason"] == "length" and done["completion_tokens"] == 9
    assert set(done) == {"type", "id", "finish_reason", "prompt_tokens", "completion_tokens",
                         "ttft_s", "tokens_per_s", "seconds", "memory_bytes"}


def test_stop_string_through_the_loop(loop):
    worker, _ = loop
    sent = ask(worker, max_tokens=40, stop=["brown"])
    assert "".join(m["text"] for m in sent if m["type"] == "token") == "The quick "
    assert sent[-1]["finish_reason"] == "stop"
    assert sent[-1]["completion_tokens"] == len("The quick brown")


def test_max_tokens_is_clamped_to_the_context(loop):
    worker, _ = loop
    sent = ask(worker, content="x" * 60, max_tokens=100)
    assert sent[-1]["completion_tokens"] == 4 and sent[-1]["finish_reason"] == "length"


def test_a_prompt_over_the_context_is_422_with_its_count(loop):
    worker, _ = loop
    [error] = ask(worker, content="x" * 80)
    assert error["type"] == "error" and error["id"] == "r" and error["status"] == 422
    assert error["error_type"] == "context_length"
    assert "80 tokens" in error["message"] and "64 tokens" in error["message"]


def test_cancel_stops_after_the_token_in_hand(loop):
    worker, out = loop
    out.on_send = lambda m: m["type"] == "token" and worker.cancel("r")
    sent = ask(worker, content="hang", max_tokens=40)
    assert sent[-1]["finish_reason"] == "cancelled" and sent[-1]["completion_tokens"] == 1


def test_a_request_cancelled_while_queued_answers_cancelled_at_once(loop):
    worker, _ = loop
    worker.cancel("queued")
    sent = ask(worker, id="queued", content="hang", max_tokens=40)
    assert sent[-1]["finish_reason"] == "cancelled"
    assert ask(worker, id="next", max_tokens=3)[-1]["completion_tokens"] == 3


def test_failures_answer_an_error_and_the_worker_goes_on(loop):
    worker, _ = loop
    [error] = [m for m in ask(worker, content="explode") if m["type"] == "error"]
    assert error["status"] == 500 and "exploded" in error["message"]
    [misfit] = ask(worker, adapter="misfit")
    assert misfit["status"] == 422 and misfit["error_type"] == "adapter"
    [bad] = ask(worker, max_tokens=-1)
    assert bad["status"] == 400
    assert ask(worker, max_tokens=2)[-1]["type"] == "done"


# --- as a process ---------------------------------------------------------------------------
@pytest.fixture()
def start(tmp_path):
    started = []

    def start(model="fake", **kwargs):
        w = InferenceWorker(FAKE, model, tmp_path / f"log{len(started)}", **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def test_stdout_carries_only_protocol_lines_and_eof_ends_the_worker(start):
    w = start()
    assert w.wait_ready(60)["backend"] == "fake"  # memory_bytes() prints: not on stdout
    w.proc.stdin.write(b"not json\n")
    w.send({"op": "dance"})
    assert w.reply()["status"] == 400 and w.reply()["status"] == 400
    assert w.generate("a", max_tokens=3).end["type"] == "done"
    assert w.close() == 0
    assert "a library's stray print" in w.log_text()


def test_eof_cancels_the_running_generation(start):
    w = start()
    w.wait_ready(60)
    w.send(proto.generate_request("h", [{"role": "user", "content": "hang"}], max_tokens=40))
    assert w.reply()["type"] == "start" and w.reply()["type"] == "token"
    w.proc.stdin.close()
    assert w.reply()["finish_reason"] == "cancelled"
    assert w.proc.wait(timeout=30) == 0


def test_shutdown_ends_the_worker(start):
    w = start()
    w.wait_ready(60)
    w.send({"op": "shutdown"})
    assert w.proc.wait(timeout=30) == 0


def test_a_model_that_does_not_load_answers_an_error_and_exits(start):
    w = start("missing")
    error = w.reply(60)
    assert error["type"] == "error" and error["id"] is None and error["status"] == 404
    assert w.proc.wait(timeout=30) == 1


@pytest.mark.parametrize("mode", ["prctl", "poll"])
def test_the_worker_exits_when_its_parent_dies(start, mode):
    import platform

    if mode == "prctl" and platform.system() != "Linux":
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    w = start(parent=True, env={"PROSPECT_PARENT_WATCH": mode})
    pid = w.worker_pid()
    w.wait_ready(60)
    w.kill()  # the parent; our end of the worker's stdin stays open
    wait_gone(pid)
