"""One inference worker process: its pipes, its queue of requests, its death.

The worker (``python -m workers.<backend>.serve --model PATH``) speaks JSON lines
(contract/inference.py) on stdin/stdout; its stderr goes to ``<home>/inference/<name>.log``.
A reader thread reads every reply; requests are sent one at a time in arrival order (the
next ``generate`` only after the previous one's ``done`` or ``error``, a cancelled one
included), and each reply is handed to its request's asyncio queue with
``loop.call_soon_threadsafe``. Requests made while the model loads wait for ``ready``.

When the process ends (a crash, a kill, an unload) every request still in hand gets an
``error`` reply naming what happened and the end of the log; the worker is then dead for
good, and the manager starts a fresh one for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from contract.inference import decode, encode, error_reply

log = logging.getLogger("prospect.inference")
LOG_TAIL = 1500  # characters of the worker's log quoted when it dies


class Request:
    """One generation: the message sent, and the queue its replies arrive on."""

    def __init__(self, id: str, message: dict[str, Any], loop: asyncio.AbstractEventLoop):
        self.id = id
        self.message = message
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent = False
        self.cancel_sent = False
        self.finished = False

    def put(self, reply: dict[str, Any]) -> None:
        if reply.get("type") in ("done", "error"):
            self.finished = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, reply)


def log_tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def tree_rss(pid: int | None) -> int:
    """Resident memory of a process and its children (0 when it is gone)."""
    if not pid:
        return 0
    try:
        p = psutil.Process(pid)
        total = p.memory_info().rss
        for child in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    except psutil.Error:
        return 0


class InferenceWorker:
    def __init__(self, backend: str, model_path: str, model: str, cmd: list[str],
                 log_path: Path, env: dict[str, str], cwd: Path | None = None,
                 on_exit: Callable[[InferenceWorker], None] | None = None):
        self.backend = backend
        self.model_path = model_path
        self.model = model  # the id it was first asked for (shown on the page)
        self.cmd = cmd
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.on_exit = on_exit
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}  # the ready reply
        self.ready = threading.Event()
        self.dead = threading.Event()
        self.exit_reason: str | None = None  # set when we stop it on purpose
        self.load_error: dict[str, Any] | None = None
        self.adapters: list[str] = []  # adapter ids asked of it, in first-use order
        self.started_at = time.time()
        self.loaded_at: float | None = None
        self.last_used_at = time.time()
        self.memory_bytes: int | None = None
        self._lock = threading.Lock()
        self._pending: deque[Request] = deque()
        self._current: Request | None = None
        self._write_lock = threading.Lock()

    # --- process ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the process (OSError when it cannot be); the load goes on in the worker."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.cmd)}\n"
                       .encode())
            logf.flush()
            # Its own session: a Ctrl-C at the server's terminal is the server's to handle;
            # the worker goes when its stdin closes or its parent dies (contract).
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=logf, env=self.env,
                                         cwd=self.cwd, start_new_session=True, close_fds=True)
        threading.Thread(target=self._read, name=f"inference-{self.proc.pid}",
                         daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self.dead.is_set()

    def rss_bytes(self) -> int:
        """Resident memory of the process and its children now (0 when gone)."""
        return tree_rss(self.proc.pid) if self.alive else 0

    def stop(self, reason: str, timeout: float = 5.0) -> None:
        """Shut it down (shutdown op, close stdin, then kill); requests in hand get an error
        naming ``reason``. Safe from any thread, and more than once."""
        with self._lock:
            if self.exit_reason is None:
                self.exit_reason = reason
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.dead.wait(timeout)
            return
        self._write({"op": "shutdown"})
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.dead.wait(timeout)

    # --- requests --------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def submit(self, req: Request, adapter_id: str | None = None) -> None:
        """Queue a generation; it is sent once the model is loaded and those before it are
        done. A dead worker answers with the error at once."""
        self.last_used_at = time.time()
        with self._lock:
            if adapter_id and adapter_id not in self.adapters:
                self.adapters.append(adapter_id)
            if self.dead.is_set():
                req.put(self._death_error(req.id))
                return
            self._pending.append(req)
            self._advance()

    def cancel(self, req: Request) -> None:
        """Stop ``req``: dropped from the queue if not yet sent, else a cancel op (its
        ``done`` still comes, and only then is the next request sent)."""
        with self._lock:
            if req.finished:
                return
            if req in self._pending:
                self._pending.remove(req)
                req.put({"type": "done", "id": req.id, "finish_reason": "cancelled",
                         "prompt_tokens": 0, "completion_tokens": 0})
                return
            if req is self._current and not req.cancel_sent:
                req.cancel_sent = True
                self._write({"op": "cancel", "id": req.id})

    def _advance(self) -> None:
        """Send the next request if none is in hand (called with the lock held)."""
        while self._current is None and self._pending and self.ready.is_set() \
                and not self.dead.is_set():
            req = self._pending.popleft()
            self._current = req
            req.sent = True
            if not self._write(req.message):
                self._current = None
                req.put(self._death_error(req.id))

    def _write(self, message: dict[str, Any]) -> bool:
        proc = self.proc
        if proc is None or proc.stdin is None:
            return False
        try:
            with self._write_lock:
                proc.stdin.write(encode(message))
                proc.stdin.flush()
            return True
        except (OSError, ValueError):  # a broken pipe, a closed file: the reader sees it end
            return False

    # --- the reader thread -----------------------------------------------------------------
    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            try:
                reply = decode(line)
            except ValueError:
                log.warning("inference worker %s: not a protocol line: %r", self.pid,
                            line[:200])
                continue
            self._handle(reply)
        code = self.proc.wait()
        self._ended(code)

    def _handle(self, reply: dict[str, Any]) -> None:
        kind = reply.get("type")
        if "memory_bytes" in reply and isinstance(reply["memory_bytes"], int):
            self.memory_bytes = reply["memory_bytes"]
        if kind == "ready":
            self.info = reply
            self.loaded_at = time.time()
            self.last_used_at = self.loaded_at
            log.info("inference worker %s: %s loaded on %s (%s) in %.1fs", self.pid,
                     self.model, reply.get("device"), self.backend, reply.get("load_s") or 0)
            with self._lock:
                self.ready.set()
                self._advance()
            return
        with self._lock:
            req = self._current
            if kind == "error" and reply.get("id") is None and not self.ready.is_set():
                self.load_error = reply  # the model did not load; the worker exits next
                return
            if req is None or reply.get("id") != req.id:
                return  # a late line of a request already answered
            req.put(reply)
            if kind in ("done", "error"):
                self._current = None
                self.last_used_at = time.time()
                self._advance()

    def _ended(self, code: int) -> None:
        with self._lock:
            self.dead.set()
            left = [r for r in (self._current, *self._pending) if r is not None]
            self._current = None
            self._pending.clear()
        if self.exit_reason is None:
            log.warning("inference worker %s (%s, %s) exited with code %s", self.pid,
                        self.model, self.backend, code)
        for req in left:
            req.put(self._death_error(req.id, code))
        self.ready.set()  # nobody waits for a ready that will never come
        if self.on_exit:
            self.on_exit(self)

    def _death_error(self, id: str, code: int | None = None) -> dict[str, Any]:
        code = self.proc.returncode if code is None and self.proc else code
        if self.load_error is not None:
            return {**self.load_error, "id": id}
        if self.exit_reason is not None:
            return error_reply(id, f"the model {self.model} was unloaded ({self.exit_reason})",
                               "send the request again to load it", status=503,
                               error_type="unloaded")
        what = "before it loaded the model" if self.loaded_at is None else "mid-answer"
        tail = log_tail(self.log_path)
        return error_reply(id, f"the inference worker for {self.model} ({self.backend}) "
                           f"exited {what} (code {code})"
                           + (f"; the end of its log ({self.log_path}):\n{tail}" if tail
                              else ""),
                           "the next request starts a fresh worker", status=500,
                           error_type="worker_exited")

    def snapshot(self) -> dict[str, Any]:
        iso = _iso
        return {"backend": self.backend, "model": self.model, "model_path": self.model_path,
                "device": self.info.get("device"), "dtype": self.info.get("dtype"),
                "pid": self.pid, "memory_bytes": self.memory_bytes,
                "load_s": self.info.get("load_s"), "loaded_at": iso(self.loaded_at),
                "last_used_at": iso(self.last_used_at), "busy": self.busy,
                "waiting": self.waiting, "adapters": list(self.adapters),
                "state": "ready" if self.loaded_at else "loading",
                "context_length": self.info.get("context_length")}


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()
