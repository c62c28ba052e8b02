"""The job page in real Chromium while a real tiny torch job trains, then after it finished:
every chart grows in place over the one SSE stream, the artifacts panel and the actions follow
the job without a reload, the adapter downloads as a zip, clone prefills the form, delete asks
first. Also the adapters page's delete and the system panel. (tests/test_browser.py covers
submitting from the form and the loss/rewards charts; this extends it, not repeats it.)"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

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



def plot_points(chart: str) -> str:
    return (f"(() => {{ const c = window.prospectJob && window.prospectJob.charts.{chart}; "
            "return c && c.plot ? c.plot.data[0].length : 0 })()")


def test_live_charts_artifacts_actions_then_clone_download_delete(browser, live_server):
    from playwright.sync_api import expect

    status, job = live_server.post("/api/jobs", {
        "name": "live page", "model": "tiny-demo", "dataset": "demo-kto",
        "params": {"max_steps": 30, "logging_steps": 1, "save_steps": 15,
                   "gradient_accumulation_steps": 1, "max_length": 96,
                   "learning_rate": 1e-4}})
    assert status == 201, job
    jid = job["id"]
    context, page, watch = open_page(browser, width=1366)
    asked: list[str] = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.goto(f"{live_server.url}/jobs/{jid}")
    page.evaluate("window.__samePage = true")
    expect(page.locator("#job-actions [data-action=cancel]")).to_be_visible()
    expect(page.locator("#job-actions [data-action=delete]")).to_be_hidden()

    wait_js(page, f"({LOSS_POINTS})() >= 3", timeout=TRAIN_TIMEOUT_MS)
    wait_js(page, plot_points("tps") + " >= 3")
    wait_js(page, plot_points("lr") + " >= 3")
    first_mem = page.evaluate(plot_points("mem"))
    shot(page, "20-job-live-charts")
    expect(page.locator("#job-card .badge")).to_have_text("succeeded", timeout=TRAIN_TIMEOUT_MS)
    wait_js(page, f"({LOSS_POINTS})() >= 30")
    wait_js(page, plot_points("mem") + f" > {max(first_mem, 1)}")  # memory kept coming
    assert page.evaluate("window.__samePage") is True  # all of that live, no reload
    # The tiny model's process is far under a quarter of the machine: the chart starts scaled
    # to it, the machine's total in the note; unticked, the whole machine is drawn.
    expect(page.locator("#mem-fit")).to_be_checked()
    expect(page.locator("#mem-note")).to_contain_text("machine total")
    page.uncheck("#mem-fit")
    labels = page.evaluate("window.prospectJob.charts.mem.plot.series.map(s => s.label)")
    assert "total" in labels and "process" in labels and "available" in labels, labels
    # The run ended: the artifacts panel and the action buttons followed, still no reload.
    expect(page.locator("#job-artifacts tr[data-kind=adapter] a")).to_have_text("Download")
    expect(page.locator("#job-artifacts tr[data-kind=checkpoint]")).to_have_count(2)
    expect(page.locator("#job-actions [data-action=cancel]")).to_be_hidden()
    for action in ("clone", "fuse", "delete"):
        expect(page.locator(f"#job-actions [data-action={action}]")).to_be_visible()
    wait_log_end(page, live_server, jid)
    shot(page, "21-job-finished-live")

    with page.expect_download() as info:
        page.locator("#job-artifacts tr[data-kind=adapter] a").click()
    data = Path(info.value.path()).read_bytes()
    assert "adapter/adapter_config.json" in zipfile.ZipFile(io.BytesIO(data)).namelist()

    page.locator("#job-actions [data-action=clone]").click()
    page.wait_for_url(f"**/jobs/new?from={jid}")
    expect(page.locator("#f-name")).to_have_value("live page (copy)")
    expect(page.locator("#f-max_steps")).to_have_value("30")
    expect(page.locator("#f-save_steps")).to_have_value("15")
    expect(page.locator("#f-model")).to_have_value("tiny-demo")
    shot(page, "22-clone-prefilled", full_page=False)

    page.goto(f"{live_server.url}/jobs/{jid}")  # a fresh visit: from the database only
    wait_js(page, plot_points("mem") + " >= 2")
    wait_js(page, plot_points("tps") + " >= 30")
    page.locator("#job-actions [data-action=delete]").click()
    page.wait_for_url(f"{live_server.url}/")
    assert "removed for good" in asked[-1]
    assert live_server.request("GET", f"/api/jobs/{jid}")[0] == 404
    watch.check()
    context.close()


def test_adapters_page_delete_asks_then_removes_the_files(browser, live_server):
    from playwright.sync_api import expect

    status, job = live_server.post("/api/jobs", {
        "name": "adapter to delete", "model": "tiny-demo", "dataset": "demo-kto",
        "params": {"max_steps": 3, "save_steps": 3, "gradient_accumulation_steps": 1,
                   "max_length": 96}})
    assert status == 201
    job = live_server.wait_job(job["id"])
    assert job["status"] == "succeeded"
    context, page, watch = open_page(browser, width=1366)
    page.goto(f"{live_server.url}/adapters")
    row = page.locator(f"#adapters-table tr[data-job-id='{job['id']}']")
    expect(row).to_contain_text("tiny-demo")
    shot(page, "23-adapters")
    messages = []

    def answer(dialog, accept):
        messages.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))  # "no": nothing happens
    row.get_by_role("button", name="Delete").click()  # returns once the dialog is answered
    assert "run, its metrics and log stay" in messages[0]
    expect(row).to_be_visible()
    page.once("dialog", lambda d: answer(d, True))
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert live_server.get(f"/api/jobs/{job['id']}")["adapter_path"] is None
    watch.check()
    context.close()


def test_system_panel_on_every_page_refreshes(browser, live_server):
    from playwright.sync_api import expect

    context, page, watch = open_page(browser, width=1366)
    for path in ("/", "/jobs/new", "/adapters", "/models"):
        page.goto(live_server.url + path)
        expect(page.locator("[data-testid=sys-memory]")).to_contain_text("free of")
        expect(page.locator("[data-testid=sys-backends]")).to_contain_text("cpu")
    # Wait for the refresh itself, not for a time it usually takes (a busy machine is slower).
    with page.expect_request(lambda r: "/fragments/system" in r.url, timeout=20_000):
        pass
    watch.check()
    context.close()


def test_cancel_then_resume_then_fuse_from_the_action_bar(browser, live_server):
    from playwright.sync_api import expect

    status, job = live_server.post("/api/jobs", {
        "name": "resume me", "model": "tiny-demo", "dataset": "demo-kto",
        # No periodic checkpoint (each costs a save of the optimizer state): the cancel's
        # SIGTERM makes the one the resume starts from.
        "params": {"max_steps": 40, "logging_steps": 1, "save_steps": 1000,
                   "gradient_accumulation_steps": 1, "max_length": 96}})
    assert status == 201, job
    context, page, watch = open_page(browser, width=1366)
    page.on("dialog", lambda d: d.accept())
    page.goto(f"{live_server.url}/jobs/{job['id']}")
    wait_js(page, f"({LOSS_POINTS})() >= 3", timeout=TRAIN_TIMEOUT_MS)
    page.locator("#job-actions [data-action=cancel]").click()
    expect(page.locator("#job-card .badge")).to_have_text("cancelled", timeout=90_000)
    resume = page.locator("#job-actions [data-action=resume]")
    expect(resume).to_be_visible()  # a checkpoint exists: the bar offers to go on
    expect(page.locator("#job-actions [data-action=fuse]")).to_be_hidden()
    live_server.wait_job(job["id"])  # the worker process is gone before resuming
    resume.click()
    expect(page.locator("#job-card .badge")).to_have_text("succeeded", timeout=TRAIN_TIMEOUT_MS)
    assert live_server.get(f"/api/jobs/{job['id']}")["step"] == 40

    fuse = page.locator("#job-actions [data-action=fuse]")
    expect(fuse).to_be_visible()
    with page.expect_navigation():
        fuse.click()  # a fuse job: the page moves to it
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    fuse_id = int(page.url.rsplit("/", 1)[1])
    assert fuse_id != job["id"]
    expect(page.locator("#job-card .badge")).to_have_text("succeeded", timeout=TRAIN_TIMEOUT_MS)
    row = page.locator("#job-artifacts tr[data-kind=fused_model]")
    expect(row).to_contain_text("fused")
    expect(row.locator("a")).to_have_text("Download")
    expect(page.locator("#job-actions [data-action=clone]")).to_be_hidden()  # not for a fuse
    shot(page, "24-fuse-job")
    watch.check()
    context.close()
