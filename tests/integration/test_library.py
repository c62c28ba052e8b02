"""Adapters and models: the Hugging Face cache scan, the model picker, /models, /adapters and
deleting an adapter (files gone, run and metrics kept), over a real server and a real tiny
torch run."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import pytest

from app.hub.cache import cached_models, label, scan
from app.hub.inspect import hub_cache_dir
from tests.helpers.hf_cache import make_cache
from tests.helpers.server import kill_workers, make_server

TINY = {"max_steps": 4, "logging_steps": 1, "save_steps": 4, "gradient_accumulation_steps": 1,
        "max_length": 96}


def html_of(server, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=60) as resp:
            return resp.status, unescape(resp.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_hub_cache_dir_follows_huggingface_hub_order(tmp_path):
    assert hub_cache_dir({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}) == Path("/a")
    assert hub_cache_dir({"HF_HOME": "/b"}) == Path("/b/hub")
    assert hub_cache_dir({}) == Path.home() / ".cache" / "huggingface" / "hub"


def test_scan_lists_models_with_size_and_mlx_marks(demo_home, tmp_path):
    cache = make_cache(tmp_path / "hub", demo_home / "models" / "tiny-demo")
    found = {m["id"]: m for m in scan(cache)}
    assert set(found) == {"acme/tiny-chat", "mlx-community/tiny-chat-4bit"}  # no half, no data
    demo_bytes = sum(f.stat().st_size for f in (demo_home / "models" / "tiny-demo").iterdir())
    plain, mlx = found["acme/tiny-chat"], found["mlx-community/tiny-chat-4bit"]
    assert plain["size_bytes"] == demo_bytes  # blobs counted once, snapshot links not at all
    assert (Path(plain["path"]) / "config.json").is_file()
    assert not plain["mlx"] and label(plain) == ""
    assert mlx["mlx"] and mlx["bits"] == 4 and label(mlx) == "mlx · 4-bit"
    assert plain["architectures"] == ["LlamaForCausalLM"]
    assert cached_models({"HF_HUB_CACHE": str(tmp_path / "none")}) == []


@pytest.fixture(scope="module")
def lib_server(demo_home, tmp_path_factory):
    """A server whose HF cache holds two models, with one finished tiny run."""
    home = tmp_path_factory.mktemp("lib-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    cache = make_cache(home / "hf-hub", demo_home / "models" / "tiny-demo")
    server = make_server(home, HF_HUB_CACHE=str(cache))
    server.start()
    status, job = server.post("/api/jobs", {"name": "lib run", "model": "tiny-demo",
                                            "dataset": "demo-kto", "params": TINY})
    assert status == 201, job
    server.job = server.wait_job(job["id"])
    assert server.job["status"] == "succeeded", server.job
    yield server
    kill_workers(server)
    server.stop()


def test_models_page_lists_registered_and_cached_models(lib_server):
    status, html = html_of(lib_server, "/models")
    assert status == 200
    assert "tiny-demo" in html and "LlamaForCausalLM" in html
    # the demo's parameter count, from its safetensors header: "121 K", exact in the title
    assert '<span title="121,344 parameters">121 K</span>' in html
    assert "acme/tiny-chat" in html and "mlx-community/tiny-chat-4bit" in html
    assert "mlx · 4-bit" in html
    # A folder with no snapshot (a download stopped early) is listed as such, to delete.
    row = html.split('<tr data-repo="half/downloaded">', 1)[1].split("</tr>", 1)[0]
    assert ">incomplete</span>" in row and "Delete from cache" in row and "Train" not in row
    assert '/jobs/new?model=mlx-community/tiny-chat-4bit' in html.replace("%2F", "/")


def test_model_picker_offers_the_cache(lib_server):
    status, html = html_of(lib_server, "/jobs/new")
    assert status == 200
    assert '<optgroup label="Hugging Face cache">' in html
    assert "mlx-community/tiny-chat-4bit · " in html and "mlx · 4-bit</option>" in html
    status, html = html_of(lib_server, "/jobs/new?model=acme/tiny-chat")
    assert '<option value="acme/tiny-chat" data-mlx="false" selected>' in html
    status, html = html_of(lib_server, "/jobs/new?model=/some/folder")
    assert 'name="model_text" value="/some/folder"' in html


def test_adapters_page_then_delete_keeps_the_run(lib_server):
    jid = lib_server.job["id"]
    adapter = Path(lib_server.job["adapter_path"])
    status, html = html_of(lib_server, "/adapters")
    assert status == 200 and f"#{jid}</span> lib run" in html
    assert f"/api/jobs/{jid}/artifacts/download?path=adapter" in html
    assert f'hx-delete="/adapters/{jid}"' in html and f'hx-post="/adapters/{jid}/fuse"' in html
    metrics_before = lib_server.get(f"/api/jobs/{jid}/metrics")

    status, body = lib_server.request("DELETE", f"/api/adapters/{jid}")
    assert status == 200 and body["freed_bytes"] > 1000, body
    assert not adapter.exists() and Path(lib_server.job["run_dir"]).is_dir()
    job = lib_server.get(f"/api/jobs/{jid}")
    assert job["adapter_path"] is None and job["status"] == "succeeded"
    assert lib_server.get(f"/api/jobs/{jid}/metrics") == metrics_before
    assert all(a["job_id"] != jid for a in lib_server.get("/api/adapters"))
    status, html = html_of(lib_server, "/adapters")
    assert f"#{jid}</span> lib run" not in html
    status, body = lib_server.request("DELETE", f"/api/adapters/{jid}")
    assert status == 404 and "deleted already" in body["detail"]
    status, body = lib_server.post(f"/api/adapters/{jid}/fuse")
    assert status == 409
    artifacts = lib_server.get(f"/api/jobs/{jid}/artifacts")
    assert [a["exists"] for a in artifacts if a["kind"] == "adapter"] == [False]
    status, body = lib_server.request("DELETE", "/api/adapters/999999")
    assert status == 404


def test_delete_adapter_needs_csrf(lib_server):
    req = urllib.request.Request(lib_server.url + f"/api/adapters/{lib_server.job['id']}",
                                 method="DELETE", headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code in (403, 415)
