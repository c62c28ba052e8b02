"""An app over a home with the fake inference worker (tests/fake_inference_worker.py),
served by uvicorn in the test's process: real HTTP (streams read chunk by chunk, clients
that hang up), the manager at hand. Home: models tiny-demo (a tiny config) and broken-model
(fails to load), job 1 succeeded with an adapter folder (id tiny-demo@job-1)."""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx
import uvicorn
from sqlmodel import Session

from app.config import Settings
from app.db import migrate
from app.main import create_app
from app.models import Job, JobStatus, ModelEntry
from tests.helpers import ROOT
from tests.helpers.data import seed_db
from tests.helpers.server import free_port

FAKE = f"{sys.executable} {ROOT / 'tests' / 'fake_inference_worker.py'}"
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 512, "tie_word_embeddings": True}


class Served:
    def __init__(self, app, url: str):
        self.app, self.url = app, url
        self.http = httpx.Client(base_url=url, timeout=30)

    @property
    def manager(self):
        return self.app.state.inference

    def close(self, server, thread) -> None:
        self.http.close()
        server.should_exit = True
        thread.join(30)
        self.app.state.inference.stop_all()

    def chat(self, content: str = "hello there", model: str = "tiny-demo", **more):
        body = {"model": model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, **more}
        return self.http.post("/v1/chat/completions", json=body)

    def stream(self, content: str = "hello there", model: str = "tiny-demo", **more):
        """(status, [parsed data lines]) of a streamed answer."""
        body = {"model": model, "messages": [{"role": "user", "content": content}],
                "stream": True, **more}
        with self.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                return resp.status_code, [resp.json()]
            assert resp.headers["content-type"].startswith("text/event-stream")
            return 200, parse_sse(resp.iter_lines())


def parse_sse(lines) -> list:
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def serve(home, token: str | None = None, **settings):
    seed_db(home / "prospect.db")
    app = create_app(Settings(home=home, inference_worker_cmd=FAKE, api_token=token,
                              **settings))
    migrate(app.state.engine)
    for name in ("tiny-demo", "broken-model"):
        folder = home / "models" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(TINY))
    adapter = home / "runs" / "000001" / "adapter"
    adapter.mkdir(parents=True)
    with Session(app.state.engine) as s:
        s.add(ModelEntry(id="tiny-demo", path=str(home / "models" / "tiny-demo"),
                         source="demo"))
        s.add(ModelEntry(id="broken-model", path=str(home / "models" / "broken-model")))
        s.add(Job(name="run one", backend="torch", method="kto", model="tiny-demo",
                  dataset="demo-kto", model_path=str(home / "models" / "tiny-demo"),
                  status=JobStatus.succeeded, run_dir=str(adapter.parent),
                  adapter_path=str(adapter)))
        s.commit()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return app, server, thread, f"http://127.0.0.1:{port}"


def wait_for(check, timeout: float = 20.0, what: str = "a condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")
