"""The pages in real headless Chromium against a real server and a real tiny training run.

Uses the session's `live_server` (tests/conftest.py): `prospect serve` over a home where
`prospect init` registered the demo model `tiny-demo` and dataset `demo-kto`. Screenshots go
to tests/artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.browser import (
    LOSS_POINTS,
    TRAIN_TIMEOUT_MS,
    open_page,
    shot,
    wait_js,
    wait_log_end,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_launch_a_job_from_the_form_and_watch_it_train(browser, live_server):
    from playwright.sync_api import expect

    context, page, watch = open_page(browser)
    resp = page.goto(live_server.url + "/")
    assert "script-src 'self'" in resp.headers["content-security-policy"]  # and none broke
    expect(page.locator("h1")).to_have_text("Jobs")
    shot(page, "01-jobs-light")

    page.get_by_role("link", name="+ New job").click()
    page.wait_for_url("**/jobs/new")
    expect(page.locator("#f-model")).to_have_value("tiny-demo")
    expect(page.locator("#f-dataset")).to_have_value("demo-kto")
    shot(page, "02-new-job-light")
    expect(page.get_by_role("button", name="Start training")).to_have_count(2)  # top, bottom

    # A batch of 1 passes the browser's min=1 but not KTO: the message comes back beside it.
    page.fill("#f-name", "browser run")
    page.fill("#f-per_device_train_batch_size", "1")
    page.fill("#f-max_steps", "12")
    page.fill("#f-logging_steps", "1")
    page.fill("#f-save_steps", "6")
    page.fill("#f-learning_rate", "1e-4")
    page.click("#job-form button[type=submit]")
    error = page.locator("#err-params-per_device_train_batch_size")
    expect(error).to_contain_text("KTO needs a batch of at least 2")
    expect(page.locator("#f-max_steps")).to_have_value("12")  # the person's values stay
    assert page.url.endswith("/jobs/new")
    shot(page, "03-new-job-error-light", full_page=False)

    page.fill("#f-per_device_train_batch_size", "2")
    # Keep CI quick: one micro-batch per step and short rows (the seed defaults are for an M4).
    page.fill("#f-gradient_accumulation_steps", "1")
    page.fill("#f-max_length", "128")
    page.click(".page-head button[type=submit]")  # the top button submits the form too
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    page.evaluate("window.__samePage = true")  # gone if anything reloads the page

    wait_js(page, f"({LOSS_POINTS})() >= 3", timeout=TRAIN_TIMEOUT_MS)
    shot(page, "04-job-running-light")
    expect(page.locator("#job-card .badge")).to_have_text("succeeded", timeout=TRAIN_TIMEOUT_MS)
    assert page.evaluate("window.__samePage") is True  # updated live, never reloaded
    wait_js(page, f"({LOSS_POINTS})() >= 6")
    expect(page.locator("#job-card")).to_contain_text("Adapter saved to")
    expect(page.locator("#job-card")).to_contain_text("12 / 12")
    expect(page.locator("#log-tail")).not_to_have_text("…")
    wait_log_end(page, live_server, job_id)
    shot(page, "05-job-succeeded-light")

    job = live_server.get(f"/api/jobs/{job_id}")
    assert job["status"] == "succeeded" and job["params"]["max_steps"] == 12
    assert job["params"]["learning_rate"] == pytest.approx(1e-4)
    assert job["name"] == "browser run"
    assert sum("/events" in u for u in watch.urls) >= 1
    watch.check()

    # Back on the list: the finished job is there with its badge.
    page.get_by_role("link", name="All jobs").click()
    row = page.locator("#jobs-body tr", has_text="browser run").first
    expect(row.locator(".badge")).to_have_text("succeeded")
    shot(page, "06-jobs-after-light")
    watch.check()
    context.close()

    # A fresh visit to the finished job reads everything from the database: no stream.
    for scheme in ("light", "dark"):
        context, page, watch = open_page(browser, scheme)
        page.goto(f"{live_server.url}/jobs/{job_id}")
        wait_js(page, f"({LOSS_POINTS})() >= 6")
        wait_js(page, "window.prospectJob.charts.rewards.plot !== null")
        expect(page.locator("#log-tail")).not_to_have_text("…")
        assert not any("/events" in u for u in watch.urls)
        shot(page, f"07-job-finished-{scheme}")
        # The charts follow their container's width (one column below 1000px: wider here).
        before = page.evaluate("window.prospectJob.charts.loss.plot.width")
        page.set_viewport_size({"width": 820, "height": 1000})
        wait_js(page, f"window.prospectJob.charts.loss.plot.width != {before}")
        width = page.evaluate("window.prospectJob.charts.loss.plot.width")
        inner = page.evaluate("document.getElementById('chart-loss').clientWidth")
        assert abs(width - inner) <= 2, (width, inner)
        watch.check()
        context.close()


def test_dark_theme_and_tablet_width(browser, live_server):
    from playwright.sync_api import expect

    context, page, watch = open_page(browser, "dark")
    page.goto(live_server.url + "/")
    expect(page.locator("h1")).to_have_text("Jobs")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(15, 18, 24)", bg
    shot(page, "08-jobs-dark")
    page.goto(live_server.url + "/jobs/new")
    shot(page, "09-new-job-dark")
    watch.check()
    context.close()

    context, page, watch = open_page(browser, "light", width=820, height=1180)
    page.goto(live_server.url + "/jobs/new")
    shot(page, "10-new-job-tablet")
    jobs = live_server.get("/api/jobs?status=succeeded")
    if jobs:
        page.goto(f"{live_server.url}/jobs/{jobs[0]['id']}")
        wait_js(page, f"({LOSS_POINTS})() > 0")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 820, f"the job page scrolls sideways at tablet width ({width}px)"
        shot(page, "11-job-tablet")
    watch.check()
    context.close()


def test_cancel_from_the_card_while_training(browser, live_server):
    from playwright.sync_api import expect

    context, page, watch = open_page(browser)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(live_server.url + "/")
    page.evaluate("window.__samePage = true")
    status, job = live_server.post("/api/jobs", {
        "name": "to cancel", "model": "tiny-demo", "dataset": "demo-kto",
        "params": {"max_steps": 5000, "logging_steps": 1, "save_steps": 5000,
                   "gradient_accumulation_steps": 1, "max_length": 128}})
    assert status == 201, job
    # The list refreshes itself (every 3 s): the job a script posted shows up without a reload.
    link = page.locator("#jobs-body a", has_text="to cancel")
    expect(link).to_be_visible(timeout=10_000)
    assert page.evaluate("window.__samePage") is True
    link.click()
    page.wait_for_url(f"**/jobs/{job['id']}")
    wait_js(page, f"({LOSS_POINTS})() >= 2", timeout=TRAIN_TIMEOUT_MS)
    expect(page.locator("#job-card .badge")).to_have_text("running")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-card .badge")).to_have_text("cancelled", timeout=90_000)
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    shot(page, "12-job-cancelled-light")
    assert live_server.get(f"/api/jobs/{job['id']}")["status"] == "cancelled"
    watch.check()
    context.close()
