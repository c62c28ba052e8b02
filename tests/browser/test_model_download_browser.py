"""The Add model form in real headless Chromium (issue 15): on the Models page, a hub id typed
and checked against the loopback hub (files, size, free disk, the planner's verdict), then
Download: the job's page shows the download panel moving (bytes and files, speed, ETA) and the
job succeeds; a gated repo's refusal shows in the form. Screenshots in tests/artifacts/."""

from __future__ import annotations

import pytest

from tests.helpers.browser import open_page, painted, shot, wait_js
from tests.helpers.data import write_assets
from tests.helpers.fake_hub import FakeHub, model_files
from tests.helpers.server import kill_workers, make_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MID = ("() => { const p = document.querySelector('#job-download .progress[aria-valuenow]');"
       " const f = document.querySelector('#dl-files');"
       " if (!p || !f) return false; const v = parseFloat(p.getAttribute('aria-valuenow'));"
       " return v > 5 && v < 95 && document.querySelector('#dl-speed').textContent.includes('/s')"
       " }")
DONE = ("() => { const c = document.querySelector('.card-body');"
        " return c && c.dataset.status === 'succeeded'"
        " && document.querySelector('#job-download code') !== null }")


@pytest.fixture()
def hub(demo):
    fake = FakeHub(bytes_per_s=250_000)  # 1.5 MB of weights: ~6 s, in 256 KiB writes
    fake.add("acme/tiny-web", model_files(demo["model"], {
        "model.gguf": b"\1" * 1000, "extra.safetensors": b"\0" * 1_000_000}))
    fake.add("acme/locked", model_files(demo["model"]), gated=True)
    with fake:
        yield fake


@pytest.fixture()
def server(hub, tmp_path):
    home = tmp_path / "home"
    write_assets(home)
    s = make_server(home, HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    s.start()
    yield s
    kill_workers(s)
    s.stop()


def test_add_model_checks_then_downloads_with_progress(browser, server, hub):
    context, page, watch = open_page(browser)
    try:
        page.goto(server.url + "/models")
        form = page.locator("#model-download")
        form.locator("#md-repo").fill("acme/locked")
        form.get_by_role("button", name="Check").click()
        page.locator("#download-refused").wait_for()
        text = page.locator("#download-refused").inner_text()
        assert "acme/locked is gated" in text and "HF_TOKEN" in text

        page.locator("#md-repo").fill("acme/tiny-web")
        page.get_by_role("button", name="Check").click()
        page.locator("#check-plan").wait_for()
        assert page.locator("#check-files").inner_text() == "8"
        page.locator("#download-check summary").click()  # the files, and those left out
        assert "model.gguf" in page.locator("#download-check details").inner_text()
        page.locator("#model-download").scroll_into_view_if_needed()
        painted(page)
        shot(page, "model-download-check", full_page=False)

        page.locator("#download-start").click()
        page.wait_for_url("**/jobs/*")
        wait_js(page, MID, timeout=60_000)
        painted(page)
        shot(page, "model-download-progress", full_page=False)
        wait_js(page, DONE, timeout=90_000)
        assert "8 of 8" in page.locator("#dl-files").inner_text()
        assert "pick acme/tiny-web in a new job" in page.locator("#job-download").inner_text()
        page.goto(server.url + "/models")
        assert page.locator("text=acme/tiny-web").count() >= 1
        watch.check()
    finally:
        context.close()
