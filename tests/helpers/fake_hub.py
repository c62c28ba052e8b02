"""A small hub-shaped HTTP server on loopback, for the real `huggingface_hub` client with
HF_ENDPOINT pointed at it (issue 15). It answers what the installed client (2.x) asks:

- GET  /api/models/{repo}[/revision/{rev}]   model info: sha, siblings (sizes with ?blobs=true)
- GET  /api/models/{repo}/tree/{rev}         the file list snapshot_download reads (recursive)
- POST /api/models/{repo}/paths-info/{rev}   the paths-info endpoint (form field `paths`)
- HEAD/GET /{repo}/resolve/{rev}/{file}      ETag, X-Repo-Commit, Content-Length; large files
                                             (LFS: *.safetensors, *.bin, ...) redirect on the
                                             same host to /_cdn/{sha256}, as the hub does
- GET  /_cdn/{sha256}?commit=                the bytes, with Range (resume)

Switches on the instance: `gated` repos (401 + the hub's GatedRepo headers unless the request
carries one of `tokens`), `bad_tokens` (401 invalid credentials), unknown repos 404
(RepoNotFound), `bytes_per_s` throttles file bodies, `stall_after` sends that many bytes of a
large file then goes silent (until it is set back to None, or stop()). What it served is
counted (`served`: bytes per file name, `requests`: method and path; `wait_idle` waits for the
bodies being sent), so a test can say a resumed download fetched only what was missing. Start
it with `with FakeHub(...) as hub:`; set HF_ENDPOINT=hub.url for the client.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".onnx", ".msgpack", ".h5")
GATED_MESSAGE = ("Access to model {repo} is restricted. You must have access to it and be "
                 "authenticated to access it. Please log in.")


@dataclass
class HubFile:
    name: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.name.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:  # git's blob id: sha1 of "blob <size>\0<data>"
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    sha: str = ""
    gated: bool = False

    def __post_init__(self):
        if not self.sha:
            digest = hashlib.sha1(self.repo_id.encode())
            for f in sorted(self.files):
                digest.update(self.files[f].git_oid.encode())
            self.sha = digest.hexdigest()


def model_files(model_dir: Path, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """A model folder's files (hidden ones left out) plus `extra` (name -> bytes)."""
    files = {p.name: p.read_bytes() for p in sorted(Path(model_dir).iterdir())
             if p.is_file() and not p.name.startswith(".")}
    return {**files, **(extra or {})}


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    tokens: tuple[str, ...] = ()  # bearer tokens that open gated repos
    bad_tokens: tuple[str, ...] = ()  # tokens the hub calls invalid (401 on every request)
    bytes_per_s: float | None = None  # throttle file bodies (None: as fast as the socket)
    stall_after: int | None = None  # send this many bytes of an LFS file, then go silent
    served: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    auth_seen: list[str] = field(default_factory=list)
    sending: int = 0  # file bodies being sent now

    def add(self, repo_id: str, files: dict[str, bytes], gated: bool = False) -> HubRepo:
        repo = HubRepo(repo_id, {n: HubFile(n, d) for n, d in files.items()}, gated=gated)
        self.repos[repo_id] = repo
        return repo

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeHub:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases a stalled response
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_idle(self, timeout: float = 30) -> None:
        """Until no file body is being sent (a cancelled client's stream has noticed)."""
        deadline = time.monotonic() + timeout
        while self.sending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.sending, f"{self.sending} file bodies still being sent"

    def count(self, name: str, n: int) -> None:
        with self._lock:
            self.served[name] = self.served.get(name, 0) + n

    def blob(self, sha256: str) -> HubFile | None:
        for repo in self.repos.values():
            for f in repo.files.values():
                if f.sha256 == sha256:
                    return f
        return None


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: tests read hub.requests instead
            pass

        def do_HEAD(self):
            self._route(head=True)

        def do_GET(self):
            self._route(head=False)

        def do_POST(self):
            self._route(head=False, post=True)

        # --- routing --------------------------------------------------------------------------
        def _route(self, head: bool, post: bool = False) -> None:
            parts = urlsplit(self.path)
            path, query = unquote(parts.path), parse_qs(parts.query)
            hub.requests.append((self.command, self.path))
            auth = self.headers.get("Authorization", "")
            if auth:
                hub.auth_seen.append(auth)
            if path.startswith("/_cdn/"):
                f = hub.blob(path.removeprefix("/_cdn/"))
                commit = {"X-Repo-Commit": query.get("commit", [""])[0]}
                if f is None:
                    return self._error(404, "EntryNotFound", "No blob")
                return self._file(f, head, commit)
            if path.startswith("/api/models/"):
                return self._api(path.removeprefix("/api/models/"), query, post)
            if "/resolve/" in path:
                repo_id, _, rest = path.lstrip("/").partition("/resolve/")
                rev, _, name = rest.partition("/")
                return self._resolve(repo_id, rev, name, head)
            self._json(404, {"error": "not a hub path"})

        def _repo(self, repo_id: str) -> HubRepo | None:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if token and token in hub.bad_tokens:
                self._json(401, {"error": "Invalid credentials in Authorization header"},
                           {"X-Error-Message": "Invalid credentials in Authorization header"})
                return None
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            if repo.gated and token not in hub.tokens:
                self._error(401, "GatedRepo", GATED_MESSAGE.format(repo=repo_id))
                return None
            return repo

        def _check_rev(self, repo: HubRepo, rev: str) -> bool:
            if rev in ("main", repo.sha):
                return True
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return False

        def _api(self, rest: str, query: dict, post: bool) -> None:
            rev = "main"
            kind = "info"
            for marker in ("/revision/", "/tree/", "/paths-info/"):
                if marker in rest:
                    rest, _, rev = rest.partition(marker)
                    kind = marker.strip("/")
                    rev = rev.split("/", 1)[0]
            repo = self._repo(rest)
            if repo is None or not self._check_rev(repo, rev):
                return
            if kind in ("info", "revision"):
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                return self._json(200, _info(repo, blobs))
            if kind == "tree":
                return self._json(200, [_entry(f) for f in repo.files.values()])
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode()) if length else {}
            wanted = form.get("paths", [])
            self._json(200, [_entry(repo.files[p]) for p in wanted if p in repo.files])

        def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> None:
            repo = self._repo(repo_id)
            if repo is None or not self._check_rev(repo, rev):
                return
            f = repo.files.get(name)
            if f is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist",
                                   {"X-Repo-Commit": repo.sha})
            common = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.etag}"'}
            if f.lfs:  # the hub redirects LFS files to its CDN; here the same host
                self.send_response(302)
                where = f"/_cdn/{f.sha256}?commit={repo.sha}"
                for k, v in {**common, "Location": where, "X-Linked-Etag": f'"{f.sha256}"',
                             "X-Linked-Size": str(len(f.data)), "Content-Length": "0"}.items():
                    self.send_header(k, v)
                self.end_headers()
                return
            self._file(f, head, common)

        # --- answers --------------------------------------------------------------------------
        def _file(self, f: HubFile, head: bool, extra: dict | None = None) -> None:
            start = 0
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes="):
                start = int(rng.removeprefix("bytes=").split("-")[0] or 0)
            body = f.data[start:]
            self.send_response(206 if start else 200)
            headers = {"ETag": f'"{f.etag}"', "Content-Length": str(len(body)),
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                       **(extra or {})}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(f.data) - 1}/{len(f.data)}"
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self._send_body(f, body, start)

        def _send_body(self, f: HubFile, body: bytes, start: int) -> None:
            chunk = 16 * 1024
            sent = 0
            began = time.monotonic()
            with hub._lock:
                hub.sending += 1
            try:
                while sent < len(body):
                    if hub.stall_after is not None and f.lfs and start + sent >= hub.stall_after:
                        # silent while the switch is on: the client must time out
                        while hub.stall_after is not None and not hub._stop.wait(0.1):
                            pass
                        return
                    piece = body[sent:sent + chunk]
                    if hub.stall_after is not None and f.lfs:
                        piece = piece[:max(hub.stall_after - start - sent, 1)]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    sent += len(piece)
                    hub.count(f.name, len(piece))
                    if hub.bytes_per_s:
                        ahead = sent / hub.bytes_per_s - (time.monotonic() - began)
                        if ahead > 0 and hub._stop.wait(ahead):
                            return
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (cancelled): what was sent is counted
            finally:
                with hub._lock:
                    hub.sending -= 1

        def _json(self, status: int, body, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                         **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, extra: dict | None = None):
            self._json(status, {"error": message},
                       {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})})

    return Handler


def _entry(f: HubFile) -> dict:
    entry = {"type": "file", "oid": f.git_oid, "size": len(f.data), "path": f.name}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
    return entry


def _info(repo: HubRepo, blobs: bool) -> dict:
    siblings = []
    for f in repo.files.values():
        s = {"rfilename": f.name}
        if blobs:
            s.update(size=len(f.data), blobId=f.git_oid)
            if f.lfs:
                s["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
        siblings.append(s)
    return {"_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha,
            "private": False, "gated": "auto" if repo.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "library_name": "transformers",
            "lastModified": "2026-01-01T00:00:00.000Z", "siblings": siblings}
