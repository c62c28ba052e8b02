"""From an empty cache to a finished job on a suggested model, in real headless Chromium and
without a terminal (issue 15, "Done when"): the Models page's Suggested models lists a preset
that points at a model on a loopback hub (tests/helpers/fake_hub.py, throttled so the
download can be seen under way); Download opens the download job's page, whose progress bar
moves; the job succeeds; the Models page then lists the model as cached, and Train opens the
new-job form with the model and the preset's knobs; the job it starts trains and succeeds.
Last, Delete from cache (after the confirm) empties the cache again.

The preset comes from $PROSPECT_HOME/presets.json, the user feature for presets of one's own
(app/hub/presets.py). The mid-download screenshot is the README's docs/img/models-download.png.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.helpers import ROOT
from tests.helpers.browser import ARTIFACTS, open_page, painted, shot, wait_js
from tests.helpers.fake_hub import FakeHub, model_files
from tests.helpers.server import kill_workers, make_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = "acme/tiny-chat"
PRESET = "tiny-chat"
KNOBS = {"max_steps": 3, "logging_steps": 1, "save_steps": 3, "gradient_accumulation_steps": 1,
         "per_device_train_batch_size": 4, "max_length": 96, "learning_rate": 1e-4}
README_SHOT = ROOT / "docs" / "img" / "models-download.png"
# Well under way: the progress bar of a running job between 20 % and 80 %.
MID_DOWNLOAD = ("() => { const c = document.querySelector('.card-body');"
                " const p = document.querySelector('.progress[aria-valuenow]');"
                " if (!c || !p || c.dataset.status !== 'running') return false;"
                " const v = parseFloat(p.getAttribute('aria-valuenow'));"
                " return v >= 20 && v <= 80 }")


@pytest.fixture()
def hub(demo_home):
    """The demo model's files as acme/tiny-chat, served at ~120 KB/s (about 4 s for its
    half a megabyte)."""
    fake = FakeHub(bytes_per_s=120_000)
    fake.add(REPO, model_files(demo_home / "models" / "tiny-demo"))
    with fake:
        yield fake


@pytest.fixture()
def models_server(demo_home, hub, tmp_path):
    """A server over a copy of the demo home with an empty Hugging Face cache, the loopback
    hub as its endpoint and one preset of the person's own pointing at it."""
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    config = json.loads((demo_home / "models" / "tiny-demo" / "config.json").read_text())
    shape = {k: config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads",
                                    "vocab_size", "tie_word_embeddings")}
    (home / "presets.json").write_text(json.dumps({"presets": [{
        "id": PRESET, "model": REPO, "backend": "torch", "method": "kto",
        "title": "Tiny chat · torch KTO", "seed_says": "a test model: seconds on a CPU",
        "params": KNOBS, "shape": shape}]}))
    server = make_server(home, HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(home / "hf-hub"))
    server.start()
    yield server
    kill_workers(server)
    server.stop()


def job_id_of(url: str) -> int:
    return int(re.search(r"/jobs/(\d+)$", url).group(1))


def test_empty_cache_to_a_finished_job_on_a_suggested_model(browser, models_server, hub):
    from playwright.sync_api import expect

    server = models_server
    context, page, watch = open_page(browser)
    page.goto(server.url + "/models")
    row = page.locator(f"#suggested-models tr[data-preset='{PRESET}']")
    expect(row).to_have_attribute("data-cached", "false")
    expect(row).to_contain_text("yours")
    expect(row.locator("[data-verdict]")).to_contain_text("fits")
    expect(page.locator("#cached-models .empty-row")).to_contain_text("Nothing cached yet")
    shot(page, "60-models-empty-cache-light")

    # Download: the job's page, its progress bar under way, then done.
    row.locator("[data-action=download]").click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"), timeout=30_000)
    download_id = job_id_of(page.url)
    job = server.get(f"/api/jobs/{download_id}")
    assert (job["backend"], job["method"], job["model"]) == ("hub", "download", REPO)
    wait_js(page, MID_DOWNLOAD, timeout=90_000)
    painted(page)
    shot(page, "61-models-download-running-light", full_page=False)
    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ARTIFACTS / "61-models-download-running-light.png", README_SHOT)
    expect(page.locator(".card-body")).to_have_attribute("data-status", "succeeded",
                                                         timeout=120_000)
    assert server.wait_job(download_id)["status"] == "succeeded"
    assert hub.served.get("model.safetensors", 0) >= 400_000

    # The Models page: cached now, in the cache table with its size; Train instead.
    page.goto(server.url + "/models")
    expect(row).to_have_attribute("data-cached", "true")
    cached = page.locator(f"#cached-models tr[data-repo='{REPO}']")
    expect(cached).to_contain_text("LlamaForCausalLM")
    expect(cached).to_contain_text("KiB")
    shot(page, "62-models-cached-light")
    row.locator("[data-action=train]").click()

    # The new-job form, filled: the model from the cache picker, the preset's knobs.
    page.wait_for_url("**/jobs/new?*")
    expect(page.locator("#f-model")).to_have_value(REPO)
    expect(page.locator("#f-method")).to_have_value("torch/kto")
    expect(page.locator("#f-max_steps")).to_have_value("3")
    expect(page.locator("#f-learning_rate")).to_have_value("0.0001")
    page.select_option("#f-dataset", "demo-kto")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/\d+$"), timeout=60_000)
    train_id = job_id_of(page.url)
    assert train_id != download_id
    expect(page.locator(".card-body")).to_have_attribute("data-status", "succeeded",
                                                         timeout=240_000)
    job = server.wait_job(train_id)
    assert job["status"] == "succeeded" and job["model"] == REPO, job
    assert job["params"]["max_steps"] == 3 and job["step"] == 3
    assert job["model_path"].startswith(str(server.home / "hf-hub"))

    # Delete from cache, after the confirm: the row goes, the cache is empty again.
    page.goto(server.url + "/models")
    asked = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.locator(f"#cached-models tr[data-repo='{REPO}'] [data-action=delete-cached]").click()
    expect(page.locator("#cache-deleted")).to_contain_text(f"{REPO} was deleted")
    expect(page.locator("#cached-models .empty-row")).to_be_visible()
    assert asked and REPO in asked[0]
    assert server.get("/api/models/cache")["repos"] == []
    watch.check()
    context.close()

    for scheme, width, name in (("dark", 1400, "63-models-dark"),
                                ("light", 390, "64-models-phone")):
        context, page, watch = open_page(browser, scheme=scheme, width=width)
        page.goto(server.url + "/models")
        expect(page.locator("#suggested-models")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        shot(page, name)
        watch.check()
        context.close()
