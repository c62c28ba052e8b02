"""The loop every inference worker shares: ``python -m workers.<backend>.serve --model PATH``.

One process holds one base model, loaded once, and answers the requests of
contract/inference.py: JSON lines on stdin, JSON lines on stdout, free text on stderr.

    reader thread: stdin -> inbox (generate) | cancel flag (cancel) | exit (EOF, shutdown)
    main thread:   inbox -> one generation at a time -> start, token..., done | error

A backend (workers/torch/serve.py, workers/mlx/serve.py) only loads the model, renders the
chat template, attaches adapters and yields ``(text, token ids)``; this loop applies stop
strings (text that may be the start of one is held back; nothing after one is sent:
workers/serve_text.py), clamps ``max_tokens`` to the context, times the answer and turns
every failure into an ``error`` reply. Only a failed model load ends the worker; a failed
request answers ``error`` and the next one is served. Stdout carries protocol lines only:
file descriptor 1 is pointed at stderr once the real stdout is taken, so a library's print
cannot corrupt the stream.

The worker never outlives its parent (the server): on Linux the kernel signals it when the
parent dies (``prctl(PR_SET_PDEATHSIG)``), elsewhere a thread checks ``os.getppid()`` every
second.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO, Any, Protocol

from contract import inference as proto
from workers.runtime import OFFLINE_ENVIRONMENT, ModelNotFound
from workers.serve_text import RequestError, Sampling, fit_context, produce

PR_SET_PDEATHSIG = 1
PARENT_SIGNAL = signal.SIGUSR2  # what the kernel sends when the parent dies (Linux)
POLL_S = 1.0
EXIT_GRACE_S = 10.0  # after stdin closes, the current generation gets this long to stop
SANE_MAX_LENGTH = 10_000_000  # tokenizers without a limit say 1e30


Emit = Callable[[str, list[int]], None]


class Backend(Protocol):
    """What a backend provides; ``load`` sets ``device``, ``dtype`` and ``context_length``."""

    name: str
    device: str
    dtype: str
    context_length: int

    def load(self, model: str) -> None: ...

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]: ...

    def attach(self, adapter: str | None) -> None:
        """Load the adapter folder if it is not attached yet; RequestError(422) if it does
        not fit this model."""

    def stream(self, ids: list[int], adapter: str | None, sampling: Sampling,
               cancelled: Callable[[], bool], emit: Emit) -> str:
        """Generate, calling ``emit(new text, its token ids)`` from the generating thread as
        tokens come (no hand-over to another thread: with the GIL, a consumer thread waits
        up to a switch interval per wake-up, and on CUDA the generating thread seldom lets
        go); stop after the token in hand once ``cancelled()``; return "stop" (end of
        sequence) or "length"."""

    def memory_bytes(self) -> int: ...


# --- pure pieces --------------------------------------------------------------------------
def context_length(max_positions: int | None, model_max_length: int | None) -> int:
    """The model's context: its position limit, or the tokenizer's when smaller and sane."""
    limits = [n for n in (max_positions, model_max_length)
              if isinstance(n, int) and 0 < n < SANE_MAX_LENGTH]
    return min(limits) if limits else 2048


def chat_prompt_ids(tokenizer: Any, model_id: str, messages: list[dict[str, str]]) -> list[int]:
    """The conversation as the model's chat template renders it (as training does), ready
    for the answer; 422 when the model has none."""
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError(422, "chat_template", f"the model {model_id} has no chat template",
                           "Use an instruct/chat model, or add a chat_template to its "
                           "tokenizer_config.json.")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                        add_generation_prompt=True)
    return [int(i) for i in ids]


def parent_watch_mode(system: str, has_prctl: bool) -> str:
    """How a worker notices its parent's death: the kernel tells it (Linux), or it polls."""
    return "prctl" if system == "Linux" and has_prctl else "poll"


def _libc_prctl():
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


def watch_parent(mode: str | None = None) -> str:
    """Exit when the parent process dies; return the mode used. PROSPECT_PARENT_WATCH=poll
    forces the polling thread (what macOS uses), so Linux tests cover both."""
    parent = os.getppid()
    prctl = _libc_prctl()
    mode = mode or os.environ.get("PROSPECT_PARENT_WATCH") or parent_watch_mode(
        platform.system(), prctl is not None)

    def gone() -> bool:
        return os.getppid() != parent

    if mode == "prctl" and prctl is not None:
        # The kernel sends the signal when the *thread* that started us exits, too: the
        # handler exits only when we were really handed to another process.
        signal.signal(PARENT_SIGNAL, lambda *_: os._exit(0) if gone() else None)
        prctl(PR_SET_PDEATHSIG, int(PARENT_SIGNAL), 0, 0, 0)
        if gone():  # it died before the call
            os._exit(0)
        return "prctl"

    def poll() -> None:
        while not gone():
            time.sleep(POLL_S)
        os._exit(0)

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()
    return "poll"


def parse_request(msg: dict[str, Any]) -> tuple[list[dict[str, str]], str | None, Sampling,
                                               list[str]]:
    """(messages, adapter, sampling, stop strings) of a generate request; RequestError(400)."""
    def bad(message: str) -> RequestError:
        return RequestError(400, "invalid_request", message,
                            "The server sent a malformed request: a bug in the caller.")

    messages = msg.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages):
        raise bad("messages must be a non-empty list of {role, content} strings")
    adapter = msg.get("adapter")
    if adapter is not None and not (isinstance(adapter, str) and adapter):
        raise bad("adapter must be a folder path or null")

    def number(name: str, default: float) -> float:
        value = msg.get(name, default)
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(f"{name} must be a number")
        return float(value)

    max_tokens = msg.get("max_tokens", proto.DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad("max_tokens must be a whole number of at least 1")
    temperature = number("temperature", proto.DEFAULT_TEMPERATURE)
    top_p = number("top_p", proto.DEFAULT_TOP_P)
    if temperature < 0 or not 0 < top_p <= 1:
        raise bad("temperature must be at least 0 and top_p in (0, 1]")
    seed = msg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad("seed must be a whole number or null")
    stop = msg.get("stop") or []
    if not isinstance(stop, list) or len(stop) > proto.MAX_STOP_STRINGS or not all(
            isinstance(s, str) for s in stop):
        raise bad(f"stop must be a list of at most {proto.MAX_STOP_STRINGS} strings")
    return messages, adapter, Sampling(max_tokens, temperature, top_p, seed), stop


# --- the process --------------------------------------------------------------------------
class Output:
    """The real stdout, for protocol lines only; one line at a time from any thread."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.stream.write(proto.encode(message))
            self.stream.flush()

    @classmethod
    def take_stdout(cls) -> Output:
        """Keep the real stdout for the protocol; send fd 1 (C and Python prints) to stderr."""
        sys.stdout.flush()
        real = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(real)


class Worker:
    def __init__(self, backend: Backend, model: str, out: Output):
        self.backend, self.model, self.out = backend, model, out
        self.inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lock = threading.Lock()
        self.current: tuple[str | None, threading.Event] | None = None
        self.cancelled_ids: set[str] = set()
        self.finished = threading.Event()

    # reader thread
    def read(self, stdin: IO[bytes]) -> None:
        for line in iter(stdin.readline, b""):
            if not line.strip():
                continue
            try:
                msg = proto.decode(line)
            except ValueError as exc:
                self.out.send(proto.error_reply(None, f"not a JSON object: {exc}",
                                                status=400, error_type="invalid_request"))
                continue
            op = msg.get("op")
            if op == "generate":
                self.inbox.put(msg)
            elif op == "cancel":
                self.cancel(msg.get("id"))
            elif op == "shutdown":
                break
            else:
                self.out.send(proto.error_reply(msg.get("id"), f"unknown op {op!r}", status=400,
                                                error_type="invalid_request"))
        with self.lock:  # stdin closed or shutdown: stop what runs, take nothing more
            if self.current is not None:
                self.current[1].set()
        self.inbox.put(None)
        if not self.finished.wait(EXIT_GRACE_S):
            os._exit(0)

    def cancel(self, id: Any) -> None:
        with self.lock:
            if self.current is not None and self.current[0] == id:
                self.current[1].set()
            elif isinstance(id, str):
                self.cancelled_ids.add(id)  # still queued: it answers "cancelled" at once

    # main thread
    def serve(self) -> None:
        while (msg := self.inbox.get()) is not None:
            self.handle(msg)
        self.finished.set()

    def handle(self, msg: dict[str, Any]) -> None:
        id = msg.get("id") if isinstance(msg.get("id"), str) else None
        flag = threading.Event()
        with self.lock:
            if id in self.cancelled_ids:
                self.cancelled_ids.discard(id)
                flag.set()
            self.current = (id, flag)
        try:
            self.generate(id, msg, flag)
        except RequestError as exc:
            self.out.send(proto.error_reply(id, exc.message, exc.hint, status=exc.status,
                                            error_type=exc.error_type))
        except Exception as exc:  # the worker stays up for the next request
            traceback.print_exc()
            self.out.send(unexpected_error(id, exc))
        finally:
            with self.lock:
                self.current = None

    def generate(self, id: str | None, msg: dict[str, Any], flag: threading.Event) -> None:
        t0 = time.perf_counter()
        if id is None:
            raise RequestError(400, "invalid_request", "a generate request needs a string id")
        messages, adapter, sampling, stops = parse_request(msg)
        backend = self.backend
        ids = backend.prompt_ids(messages)
        sampling = fit_context(len(ids), backend.context_length, sampling)
        backend.attach(adapter)
        self.out.send({"type": "start", "id": id, "prompt_tokens": len(ids)})

        def send(text: str, new_ids: list[int]) -> None:
            self.out.send({"type": "token", "id": id, "text": text, "ids": new_ids})

        answer = produce(backend, ids, adapter, sampling, stops, flag.is_set, send, t0)
        self.out.send({
            "type": "done", "id": id, "finish_reason": answer.finish_reason,
            "prompt_tokens": len(ids), "completion_tokens": answer.completion_tokens,
            "ttft_s": answer.ttft_s, "tokens_per_s": answer.tokens_per_s,
            "seconds": answer.seconds, "memory_bytes": backend.memory_bytes(),
        })


def unexpected_error(id: str | None, exc: BaseException) -> dict[str, Any]:
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if "out of memory" in message.lower() or isinstance(exc, MemoryError):
        return proto.error_reply(id, message, "The model ran out of memory: ask for fewer "
                                 "tokens, unload other models, or stop a training job.",
                                 status=500, error_type="memory")
    return proto.error_reply(id, message, "An unexpected error: the worker's log has the "
                             "traceback.", status=500, error_type=type(exc).__name__)


def load_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ModelNotFound):
        return proto.error_reply(None, str(exc), "Check the model folder, or that the hub id is "
                                 "in the local Hugging Face cache.", status=404,
                                 error_type="model_not_found")
    return unexpected_error(None, exc)


def parse_cli(prog: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True,
                        help="the base model: an absolute folder or a hub id in the local cache")
    return parser.parse_args(argv)


def main(make_backend: Callable[[], Backend], prog: str, argv: list[str] | None = None,
         environment: dict[str, str] | None = None) -> int:
    """The whole worker: watch the parent, load, say ready, serve until stdin closes."""
    args = parse_cli(prog, argv)
    for key, value in {**OFFLINE_ENVIRONMENT, **(environment or {})}.items():
        os.environ.setdefault(key, value)  # before any ML library loads
    watch_parent()
    out = Output.take_stdout()
    backend = make_backend()
    t0 = time.perf_counter()
    try:
        backend.load(args.model)
    except Exception as exc:
        traceback.print_exc()
        out.send(load_error(exc))
        return 1
    out.send({"type": "ready", "backend": backend.name, "model": args.model,
              "device": backend.device, "dtype": backend.dtype,
              "context_length": backend.context_length, "memory_bytes": backend.memory_bytes(),
              "load_s": round(time.perf_counter() - t0, 3)})
    worker = Worker(backend, args.model, out)
    threading.Thread(target=worker.read, args=(sys.stdin.buffer,), name="stdin",
                     daemon=True).start()
    worker.serve()
    return 0


def run(make_backend: Callable[[], Backend], prog: str,
        environment: dict[str, str] | None = None) -> None:
    """A backend's ``__main__``: exit at once when done (no slow interpreter teardown)."""
    code = main(make_backend, prog, environment=environment)
    sys.stderr.flush()
    os._exit(code)
