"""A hub model into the local Hugging Face cache, with progress in bytes and files.

``snapshot_download`` does the work (the normal cache, so other tools share the files; its
locks; its retries with HTTP Range inside one run). It runs in a daemon thread; the main
thread reads the cache folder every half second (finished files are snapshot links, a file
on its way is a ``*.incomplete`` blob growing) and writes a ``progress`` event: bytes and
files done of total, bytes/s, ETA. ``step``/``total_steps`` are the bytes.

SIGTERM sets the stop flag: the loop notices within 0.2 s, removes this run's partial blobs
and ends ``cancelled`` (workers/hub/__main__.py leaves without joining the client's threads).
The files that finished stay, so a resume fetches only the rest; a file cut off midway starts
again (the installed client writes each download to a file unique to its process).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from contract.hub_files import pick_files
from contract.job_config import JobConfig
from workers import runtime
from workers.hub.errors import DownloadStalled, endpoint

CHUNK_BYTES = 256 * 1024  # the client reads 10 MiB before it writes: progress would jump
EVERY_S = 0.5  # a progress event this often while bytes arrive
QUIET_EVERY_S = 5.0  # and this often while none do (the supervisor hears the worker alive)
SPEED_WINDOW_S = 5.0


def run(job: JobConfig, session: runtime.Session) -> runtime.RunResult:
    args, events, stop = job.args, session.events, session.stop
    timeout = str(args.timeout_s)
    os.environ["HF_HUB_DOWNLOAD_TIMEOUT"] = timeout  # read when huggingface_hub loads
    os.environ["HF_HUB_ETAG_TIMEOUT"] = timeout
    from huggingface_hub import HfApi, constants, snapshot_download

    constants.DOWNLOAD_CHUNK_SIZE = CHUNK_BYTES
    repo = job.model
    events.emit("status", phase="listing", message=f"reading {repo}'s files on {endpoint()}")
    info = HfApi().model_info(repo, revision=args.revision, files_metadata=True,
                              timeout=args.timeout_s)
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    wanted = chosen(list(sizes), args.allow_patterns)
    if not wanted:
        raise runtime.HintedError(f"none of {repo}'s files at {args.revision} match "
                                  f"{args.allow_patterns}", "Start the download again from "
                                  "the Models page: it lists the files the model needs now.")
    cache = Path(constants.HF_HUB_CACHE)
    storage = cache / ("models--" + repo.replace("/", "--"))
    watch = Watch(storage, str(info.sha), {f: sizes[f] for f in wanted})
    events.emit("status", phase="downloading", message=(
        f"{len(wanted)} files, {watch.total} bytes of {repo} at {info.sha[:12]} into {cache}"))

    outcome: dict[str, Any] = {}

    def fetch() -> None:
        try:
            outcome["path"] = snapshot_download(repo, revision=args.revision,
                                                allow_patterns=wanted, cache_dir=str(cache))
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=fetch, name="snapshot_download", daemon=True)
    stop.interrupt = False  # from here the loop reads the flag every 0.2 s and tidies up
    worker.start()
    last, last_bytes = 0.0, -1
    while worker.is_alive():
        worker.join(0.2)
        if stop():
            watch.remove_partial()
            done = watch.reading()
            print(f"cancelled at {done['bytes_done']} of {watch.total} bytes", flush=True)
            return runtime.RunResult("cancelled", {"repo_id": repo, **done})
        since = time.monotonic() - last
        if since >= EVERY_S and (watch.peek() != last_bytes or since >= QUIET_EVERY_S):
            last = time.monotonic()
            last_bytes = emit_progress(events, watch)
    if "error" in outcome:
        exc = outcome["error"]
        if "TimeoutException" in {c.__name__ for c in type(exc).__mro__}:
            raise DownloadStalled(f"nothing for {args.timeout_s} s, retried 5 times "
                                  f"({type(exc).__name__})") from exc
        raise exc
    path = Path(outcome["path"])
    emit_progress(events, watch, final=True)
    events.emit("artifact", kind="model", path=str(path), repo_id=repo, revision=args.revision,
                commit=info.sha, bytes=watch.total, files=len(wanted))
    return runtime.RunResult("succeeded", {"repo_id": repo, "commit": info.sha,
                                           "path": str(path), **watch.reading()})


def chosen(names: list[str], patterns: list[str]) -> list[str]:
    """The server's list (names or globs) when given, else what a model needs."""
    if not patterns:
        return pick_files(names)
    return [n for n in names if any(fnmatch(n, p) for p in patterns)]


def emit_progress(events, watch: Watch, final: bool = False) -> int:
    r = watch.reading(final)
    events.emit("progress", step=r["bytes_done"], total_steps=watch.total, unit="bytes",
                files_total=len(watch.files), bytes_total=watch.total, **r)
    return r["bytes_done"]


class Watch:
    """What of the wanted files is on disk: finished (a snapshot link) or on its way (a new
    ``*.incomplete`` blob), and the speed over the last few seconds."""

    def __init__(self, storage: Path, commit: str, files: dict[str, int]):
        self.blobs = storage / "blobs"
        self.snapshot = storage / "snapshots" / commit
        self.files = files
        self.total = sum(files.values())
        self.before = set(self._partial())  # another process's partial blobs are not ours
        self.start_bytes = self._done_bytes()[0]
        self.samples: deque[tuple[float, int]] = deque()

    def _partial(self) -> list[Path]:
        try:
            return [p for p in self.blobs.iterdir() if p.name.endswith(".incomplete")]
        except OSError:
            return []

    def _done_bytes(self) -> tuple[int, int]:
        done = [f for f in self.files if (self.snapshot / f).exists()]
        return sum(self.files[f] for f in done), len(done)

    def peek(self) -> int:
        """The bytes on disk now (finished files and this run's partial ones)."""
        partial = 0
        for p in self._partial():
            if p not in self.before:
                with contextlib.suppress(OSError):  # moved into place meanwhile
                    partial += p.stat().st_size
        return min(self._done_bytes()[0] + partial, self.total)

    def reading(self, final: bool = False) -> dict[str, Any]:
        files_done = self._done_bytes()[1]
        done = self.total if final else self.peek()
        now = time.monotonic()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW_S:
            self.samples.popleft()
        t0, b0 = self.samples[0]
        speed = (done - b0) / (now - t0) if now > t0 else None
        left = self.total - done
        eta = 0.0 if left <= 0 else (left / speed if speed else None)
        return {"bytes_done": done, "files_done": len(self.files) if final else files_done,
                "bytes_per_s": round(speed, 1) if speed is not None else None,
                "eta_s": round(eta, 1) if eta is not None else None,
                "resumed_bytes": self.start_bytes}

    def remove_partial(self) -> None:
        """This run's partial blobs: the client would delete them itself if it got the time."""
        for p in self._partial():
            if p not in self.before:
                p.unlink(missing_ok=True)
