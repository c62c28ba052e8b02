"""Shared fixtures: a demo home built once, a real server over a copy of it, the browser.
What tests call (servers, pages, workers, data) lives in tests/helpers/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.server import kill_workers, make_server, server_env


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A PROSPECT_HOME after `prospect init` (demo model and dataset built), made once."""
    home = tmp_path_factory.mktemp("prospect-home")
    subprocess.run([sys.executable, "-m", "app.cli", "init"], cwd=ROOT, env=server_env(home),
                   check=True, capture_output=True, timeout=600)
    return home


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The demo model and dataset folders (workers/tools/demo_assets.py), built once for the
    worker tests: they read them and write only into their own run folders."""
    from workers.tools.demo_assets import build_all

    home = tmp_path_factory.mktemp("demo")
    return build_all(home / "models", home / "datasets")


@pytest.fixture(scope="session")
def live_server(demo_home, tmp_path_factory):
    """A real `prospect serve` on a free port, over a copy of the demo home."""
    home = tmp_path_factory.mktemp("live-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    server = make_server(home)
    server.start()
    yield server
    kill_workers(server)
    server.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium, one for the whole session (tests/helpers/browser.py): each test opens
    its own context, so nothing but the process is shared. One Playwright per session, too:
    a second sync_playwright() in the same thread while one is open is refused."""
    from tests.helpers.browser import launch

    yield from launch()


@pytest.fixture()
def browser_or_none(request):
    """The session's browser where Chromium and Playwright are here, else None: for tests that
    only watch a page on the side and must run without one."""
    try:
        return request.getfixturevalue("browser")
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="session")
def finished_job(live_server) -> dict:
    """A tiny torch KTO run that succeeded on the live server: 6 steps, a checkpoint every 3.
    Shared by the job page's tests and the theme's (they only read it): a torch worker
    takes ~10 s to start on a 2-core machine."""
    status, job = live_server.post("/api/jobs", {
        "name": "page run", "model": "tiny-demo", "dataset": "demo-kto",
        "params": {"max_steps": 6, "logging_steps": 1, "save_steps": 3,
                   "gradient_accumulation_steps": 1, "max_length": 96, "learning_rate": 1e-4}})
    assert status == 201, job
    job = live_server.wait_job(job["id"])
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="session")
def plan_server(demo_home, tmp_path_factory):
    """A server over a copy of the demo home with `huge`: a 70 B model's config only (the
    planner's tests, API and browser)."""
    home = tmp_path_factory.mktemp("plan-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    # A model folder with only its config: 70 B parameters, which no test machine holds.
    huge = home / "models" / "huge"
    huge.mkdir(parents=True)
    (huge / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
        "vocab_size": 128256, "tie_word_embeddings": False}))
    s = make_server(home)
    s.start()
    s.huge = str(huge)
    yield s
    kill_workers(s)
    s.stop()
