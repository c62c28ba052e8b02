"""Auto-tuning in real Chromium against the real server (issue 14): the new-job form
preselects tune auto and shows the effective batch live, with the larger-batch hint where
the job plans a small share of the memory; a tuned job's page shows the Auto-tuned card, and
its Clone fills the form with the chosen values and tune off. The worker is the fake one
(tests/fake_worker.py), which tunes from the server's tune_plan.json as the real ones do."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.helpers.browser import open_page, shot
from tests.helpers.server import served_copy

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune-browser")
    # The fake worker "times" its candidates for 8 s: the job page is open before its choice.
    with served_copy(demo_home, tmp, fake=True, FAKE_SCENARIO="succeed",
                     FAKE_TUNE_DELAY_S="8") as s:
        yield s


def test_the_form_preselects_auto_and_shows_the_effective_batch_live(browser, server):
    context, page, watch = open_page(browser, width=1400, height=1200)
    try:
        page.goto(server.url + "/jobs/new")
        assert page.locator("#f-tune").input_value() == "auto"
        value = page.locator('[data-testid="effective-batch-value"]')
        expect(value).to_have_text("2")  # the demo's batch 2 × accumulation 1
        page.fill("#f-gradient_accumulation_steps", "8")
        page.locator("#f-gradient_accumulation_steps").dispatch_event("change")
        expect(value).to_have_text("16", timeout=15_000)
        page.fill("#f-per_device_train_batch_size", "4")
        page.locator("#f-per_device_train_batch_size").dispatch_event("change")
        expect(value).to_have_text("32", timeout=15_000)
        # The tiny demo plans a sliver of this machine's memory: the hint says so.
        hint = page.locator('[data-testid="larger-batch-hint"]')
        expect(hint).to_be_visible(timeout=15_000)
        expect(hint).to_contain_text("128 instead of 32")
        page.locator("#effective-batch").scroll_into_view_if_needed()
        shot(page, "tune-form-effective-batch", full_page=False)
        watch.check()
    finally:
        context.close()


def test_a_tuned_job_shows_its_card_and_clones_with_tune_off(browser, server):
    status, job = server.post("/api/jobs", {
        "name": "tuned", "model": "tiny-demo", "dataset": "demo-kto",
        "params": {"tune": "auto", "max_steps": 3, "per_device_train_batch_size": 2,
                   "gradient_accumulation_steps": 4, "max_length": 128, "device": "cpu"}})
    assert status == 201, job
    job_id = job["id"]
    while (job := server.get(f"/api/jobs/{job_id}"))["phase"] != "training":
        assert job["status"] in ("queued", "starting", "running"), job
        time.sleep(0.1)
    context, page, watch = open_page(browser, width=1400, height=1400)
    try:
        page.goto(f"{server.url}/jobs/{job_id}")  # before the worker's choice: no card yet
        card = page.locator('[data-testid="tune-card"]')
        assert server.get(f"/api/jobs/{job_id}")["tuning"] is None, "the page came too late"
        expect(card).to_have_count(0)
        # The `tune` event on the page's stream brings the card in.
        expect(card).to_be_visible(timeout=60_000)
        job = server.wait_job(job_id, timeout=120)
        assert job["status"] == "succeeded" and job["tuning"], job
        chosen = job["tuning"]["chosen"]
        page.reload()
        expect(card).to_be_visible()
        expect(card.locator("h2")).to_have_text("Auto-tuned")
        expect(page.locator('[data-testid="tune-message"]')).to_contain_text("× the seed")
        rows = card.locator("tbody tr")
        assert rows.count() == len(job["tuning"]["tried"])
        expect(card.locator('tr[data-chosen="true"]')).to_have_count(1)
        card.scroll_into_view_if_needed()
        shot(page, "tune-job-card", full_page=False)
        page.click("#job-clone")
        page.wait_for_url("**/jobs/new?from=*")
        assert page.locator("#f-tune").input_value() == "off"
        assert page.locator("#f-per_device_train_batch_size").input_value() == \
            str(chosen["per_device_train_batch_size"])
        assert page.locator("#f-gradient_accumulation_steps").input_value() == \
            str(chosen["gradient_accumulation_steps"])
        watch.check()
    finally:
        context.close()
