"""Hub downloads for real: a `prospect serve`, its hub worker (the real huggingface_hub client)
and the loopback hub (tests/helpers/fake_hub.py) serving the demo model's files. Progress in
bytes and files, cancel then resume (only the missing files fetched again), a stalling hub
(fails within the client's timeout and retries, naming the host), and the worker's own
refusals: a 404 repo, a gated repo (the hub's message and where a token goes, the token in
no event or log), an offline endpoint (at once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.data import write_assets
from tests.helpers.fake_hub import FakeHub, model_files
from tests.helpers.server import free_port, kill_workers, make_server
from tests.helpers.workers import events_of, of_type

TOKEN = "hf_" + "Qx7" * 12


@pytest.fixture(scope="module")
def hub(demo):
    extra = {"pytorch_model.bin": b"\1" * 50_000, "README.md": b"# tiny"}
    with FakeHub() as hub:
        for repo in ("acme/progress", "acme/cancel", "acme/stall", "acme/worker-ok",
                     "acme/restart"):
            hub.add(repo, model_files(demo["model"], extra))
        hub.add("acme/gated", model_files(demo["model"]), gated=True)
        yield hub


@pytest.fixture(scope="module")
def server(hub, tmp_path_factory):
    home = tmp_path_factory.mktemp("hub-home")
    write_assets(home)
    s = make_server(home, HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(home / "hf-cache"))
    s.start()
    s.cache = home / "hf-cache"
    yield s
    kill_workers(s)
    s.stop()


@pytest.fixture(autouse=True)
def hub_at_full_speed(hub):
    hub.bytes_per_s, hub.stall_after = None, None
    yield
    hub.bytes_per_s, hub.stall_after = None, None


def start(server, repo_id: str, **more) -> dict:
    status, body = server.post("/api/models/download", {"repo_id": repo_id, **more})
    assert status == 201, body
    return body


def run_dir(server, job_id: int) -> Path:
    return Path(server.get(f"/api/jobs/{job_id}")["run_dir"])


def wait_event(folder: Path, predicate, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (folder / "events.jsonl").is_file():
            for e in events_of(folder):
                if predicate(e):
                    return e.data
        time.sleep(0.05)
    raise AssertionError(f"no such event; log: {(folder / 'worker.log').read_text()[-3000:]}")


def snapshot(server, repo_id: str, hub) -> Path:
    return server.cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / \
        hub.repos[repo_id].sha


def same_files(folder: Path, hub, repo_id: str, names: list[str]) -> None:
    for name in names:
        assert (folder / name).read_bytes() == hub.repos[repo_id].files[name].data, name


def test_a_download_reports_bytes_and_files_then_registers_the_model(server, hub):
    hub.bytes_per_s = 400_000  # the 0.5 MB weights take over a second: several reports
    body = start(server, "acme/progress")
    job_id, check = body["job"]["id"], body["check"]
    names = [f["name"] for f in check["files"]]
    assert "pytorch_model.bin" not in names and "README.md" not in names
    job = server.wait_job(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    events = events_of(run_dir(server, job_id))
    progress = of_type(events, "progress")
    total = check["total_bytes"]
    assert all(p["bytes_total"] == p["total_steps"] == total for p in progress)
    assert all(p["files_total"] == len(names) for p in progress)
    middle = [p for p in progress if 0 < p["bytes_done"] < total]
    assert middle, progress  # seen on its way, not only at the end
    assert any(p["bytes_per_s"] for p in middle) and any(p["eta_s"] for p in middle)
    done = [p["bytes_done"] for p in progress]
    assert done == sorted(done) and done[-1] == total and progress[-1]["files_done"] == \
        len(names)
    folder = snapshot(server, "acme/progress", hub)
    (artifact,) = of_type(events, "artifact")
    assert artifact["kind"] == "model" and artifact["path"] == str(folder)
    same_files(folder, hub, "acme/progress", names)
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    refs = folder.parent.parent / "refs" / "main"
    assert refs.read_text() == hub.repos["acme/progress"].sha  # other tools find "main"
    assert "pytorch_model.bin" not in hub.served
    models = {m["id"]: m for m in server.get("/api/models")}
    assert models["acme/progress"]["path"] == str(folder)
    assert models["acme/progress"]["source"] == "hub"
    # Asked again: in the cache, nothing to download.
    status, again = server.post("/api/models/download", {"repo_id": "acme/progress"})
    assert status == 200 and again["cached"] is True, again


def test_cancel_then_resume_fetches_only_what_was_missing(server, hub):
    hub.bytes_per_s = 60_000  # the weights take ~8 s: time to cancel midway
    body = start(server, "acme/cancel")
    job_id, total = body["job"]["id"], body["check"]["total_bytes"]
    weights = len(hub.repos["acme/cancel"].files["model.safetensors"].data)
    folder = run_dir(server, job_id)
    # The small files are done and part of the weights is written: cancel now.
    wait_event(folder, lambda e: e.type == "progress" and e.data["bytes_done"] > total - weights)
    status, _ = server.post(f"/api/jobs/{job_id}/cancel")
    assert status in (200, 202), status
    t0 = time.monotonic()
    job = server.wait_job(job_id, timeout=60)
    assert job["status"] == "cancelled", job
    assert time.monotonic() - t0 < 15  # stopped promptly, not at the end of the file
    repo_dir = server.cache / "models--acme--cancel"
    assert not list((repo_dir / "blobs").glob("*.incomplete"))  # no partial file left
    snap = snapshot(server, "acme/cancel", hub)
    assert not (snap / "model.safetensors").exists()
    small = [n for n in body["job"]["params"]["allow_patterns"] if n != "model.safetensors"]
    same_files(snap, hub, "acme/cancel", small)
    hub.wait_idle()  # the hub has noticed the cancelled stream is gone
    served_before = dict(hub.served)

    hub.bytes_per_s = None
    status, resumed = server.post(f"/api/jobs/{job_id}/resume")
    assert status in (200, 202), resumed
    job = server.wait_job(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    same_files(snap, hub, "acme/cancel", [*small, "model.safetensors"])
    for name in small:  # finished files were not fetched again
        assert hub.served[name] == served_before[name], name
    assert hub.served["model.safetensors"] - served_before.get("model.safetensors", 0) \
        == weights


def test_a_download_survives_a_server_restart(server, hub):
    hub.bytes_per_s = 80_000
    body = start(server, "acme/restart")
    job_id = body["job"]["id"]
    wait_event(run_dir(server, job_id), lambda e: e.type == "progress" and e.data[
        "bytes_done"] > 0)
    server.stop()  # the worker goes on without it
    server.start()
    hub.bytes_per_s = None
    job = server.wait_job(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert server.get(f"/api/jobs/{job_id}")["step"] == body["check"]["total_bytes"]
    assert "acme/restart" in {m["id"] for m in server.get("/api/models")}


def test_a_stalling_hub_fails_the_job_with_the_host_and_a_hint(server, hub):
    hub.stall_after = 100_000  # the weights stop after 100 kB, the connection stays open
    body = start(server, "acme/stall", timeout_s=1)
    t0 = time.monotonic()
    job = server.wait_job(body["job"]["id"], timeout=90)
    took = time.monotonic() - t0
    assert job["status"] == "failed", job
    assert job["error_type"] == "hub_timeout", job
    host = hub.url.removeprefix("http://")
    assert f"the hub at {host} stopped sending" in job["error"]
    assert "resume the job" in job["hint"]
    assert took < 60, took  # the client's 1 s timeout and its 5 retries, not a hang


def test_a_repo_the_hub_does_not_know_is_refused_before_any_job(server):
    before = len(server.get("/api/jobs?limit=1000"))
    status, body = server.post("/api/models/download", {"repo_id": "acme/anything",
                                                        "revision": "main"})
    assert status == 404, body  # the loopback hub answers: no such repo, naming it
    assert "no model acme/anything" in body["detail"]
    assert len(server.get("/api/jobs?limit=1000")) == before


# --- the worker alone, as the server starts it ---------------------------------------------
def run_worker(tmp_path: Path, repo_id: str, endpoint: str, **env: str) -> tuple[int, list,
                                                                                  Path, float]:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "job_id": 1, "backend": "hub", "method": "download", "model": repo_id, "dataset": "",
        "run_dir": str(folder), "params": {"timeout_s": 2}, "resume_from_checkpoint": None}))
    full_env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    full_env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "cache"),
                    HF_HUB_OFFLINE="0", **env)
    t0 = time.monotonic()
    with open(folder / "worker.log", "wb") as log:
        rc = subprocess.run([sys.executable, "-m", "workers.hub", "--config",
                             str(folder / "config.json")], cwd=ROOT, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT, timeout=120).returncode
    return rc, events_of(folder), folder, time.monotonic() - t0


def test_the_worker_downloads_what_a_model_needs_without_a_server_list(tmp_path, hub):
    rc, events, _, _ = run_worker(tmp_path, "acme/worker-ok", hub.url)
    assert rc == 0 and of_type(events, "done")[0]["status"] == "succeeded"
    (artifact,) = of_type(events, "artifact")
    names = sorted(p.name for p in Path(artifact["path"]).iterdir())
    assert "pytorch_model.bin" not in names and "README.md" not in names
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)


def test_the_worker_names_a_repo_the_hub_does_not_know(tmp_path, hub):
    rc, events, _, _ = run_worker(tmp_path, "acme/missing", hub.url)
    (error,) = of_type(events, "error")
    assert rc == 1 and error["error_type"] == "repo_not_found"
    assert "no model acme/missing on 127.0.0.1:" in error["message"]
    assert "HF_TOKEN" in error["hint"]


def test_a_gated_repo_gives_the_hubs_message_and_never_the_token(tmp_path, hub):
    rc, events, folder, _ = run_worker(tmp_path, "acme/gated", hub.url, HF_TOKEN=TOKEN)
    (error,) = of_type(events, "error")
    assert rc == 1 and error["error_type"] == "gated_repo", error
    assert "Access to model acme/gated is restricted" in error["message"]
    assert "HF_TOKEN" in error["hint"] and "hf auth login" in error["hint"]
    assert f"Bearer {TOKEN}" in hub.auth_seen  # sent to the hub, and only there
    for place in ("events.jsonl", "worker.log", "config.json"):
        assert TOKEN not in (folder / place).read_text(), place


def test_an_offline_worker_fails_at_once(tmp_path):
    rc, events, _, took = run_worker(tmp_path, "acme/anything", f"http://127.0.0.1:{free_port()}")
    (error,) = of_type(events, "error")
    assert rc == 1 and error["error_type"] == "hub_unreachable", error
    assert "cannot reach the hub at 127.0.0.1:" in error["message"]
    assert "offline" in error["hint"]
    assert took < 20, took  # a worker's start and one refused connection
