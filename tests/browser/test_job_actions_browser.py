"""The job page's and the adapters page's actions in real Chromium, with the fake worker
(tests/fake_worker.py): Cancel on a running job switches the card and the action bar in
place (no reload), a refusal shows under the head, Delete asks and leaves for the jobs list;
on /adapters, Delete asks, then the list comes back without the row, or with the reason."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.browser import open_page, shot
from tests.helpers.server import kill_workers, make_server
from tests.helpers.workers import FAKE

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def fake_server(demo_home, tmp_path_factory):
    """A server whose workers are the fake one; `scenario` (a file the wrapper reads when a
    worker starts) picks what the next job does."""
    root = tmp_path_factory.mktemp("actions")
    home = root / "home"
    shutil.copytree(demo_home, home)
    scenario = root / "scenario"
    scenario.write_text("succeed")
    python = root / "fake-python"
    python.write_text(f"#!/bin/sh\nFAKE_SCENARIO=$(cat {scenario}) exec {sys.executable} "
                      f"{FAKE} \"$@\"\n")
    python.chmod(0o755)
    server = make_server(home, PROSPECT_PYTHON=str(python))
    server.scenario = scenario
    server.start()
    yield server
    kill_workers(server)
    server.stop()


def start_job(server, scenario: str, name: str) -> dict:
    """A job whose worker runs `scenario`, once that worker has reported a step."""
    server.scenario.write_text(scenario)
    status, job = server.post("/api/jobs", {"name": name, "model": "tiny-demo",
                                            "dataset": "demo-kto", "params": {"max_steps": 3}})
    assert status == 201, job
    deadline = time.monotonic() + 60
    while (job := server.get(f"/api/jobs/{job['id']}"))["step"] < 1:
        assert job["status"] in ("queued", "starting", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def test_cancel_switches_the_card_in_place_then_delete_leaves(browser, fake_server):
    from playwright.sync_api import expect

    job = start_job(fake_server, "slow", "cancel me")
    jid = job["id"]
    context, page, watch = open_page(browser, width=1366)
    asked: list[str] = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.goto(f"{fake_server.url}/jobs/{jid}")
    page.evaluate("window.__samePage = true")
    bar = page.locator("#job-actions")
    expect(page.locator("#job-card .badge")).to_have_text("running")
    expect(bar.locator("[data-action=cancel]")).to_be_visible()
    expect(bar.locator("[data-action=delete]")).to_have_count(0)

    bar.locator("[data-action=cancel]").click()
    # The answer's card first says "cancelling"; the stream then brings the end.
    expect(page.locator("#job-card .badge")).to_have_text("cancelled", timeout=60_000)
    assert "saves a checkpoint first" in asked[0]
    expect(bar.locator("[data-action=cancel]")).to_have_count(0)
    expect(bar.locator("[data-action=resume]")).to_be_visible()  # the worker saved one
    expect(bar.locator("[data-action=delete]")).to_be_visible()
    expect(page.locator("#action-error")).to_be_hidden()
    assert page.evaluate("window.__samePage") is True  # no reload
    shot(page, "actions-01-cancelled")

    # A refusal comes back as HTML under the head, the bar still there: no checkpoint left.
    done = fake_server.wait_job(jid, timeout=60)
    shutil.rmtree(done["last_checkpoint"])
    bar.locator("[data-action=resume]").click()
    expect(page.locator("#action-error")).to_have_text(
        f"Resume failed: job {jid} has no checkpoint to resume from; clone it instead")
    expect(bar.locator("[data-action=delete]")).to_be_visible()
    assert page.evaluate("window.__samePage") is True
    shot(page, "actions-02-refused", full_page=False)

    # Delete from a fresh visit: the live page still has a log refresh due from the job's
    # end, which would ask for the log of a job that is gone by then.
    page.reload()
    expect(page.locator("#log-tail")).not_to_have_text("…")  # its one log read is done
    bar.locator("[data-action=delete]").click()
    page.wait_for_url(f"{fake_server.url}/")
    assert "removed for good" in asked[-1]
    assert fake_server.request("GET", f"/api/jobs/{jid}")[0] == 404
    watch.check()
    context.close()


def test_adapters_delete_asks_then_the_list_comes_back(browser, fake_server):
    from playwright.sync_api import expect

    kept, gone = (fake_server.wait_job(start_job(fake_server, "succeed", n)["id"])
                  for n in ("kept adapter", "adapter to delete"))
    for job in (kept, gone):  # the fake worker names its adapter folder but writes nothing
        Path(job["adapter_path"]).mkdir(exist_ok=True)
        Path(job["adapter_path"], "adapter_model.safetensors").write_bytes(b"w" * 4096)
    context, page, watch = open_page(browser, width=1366)
    page.goto(f"{fake_server.url}/adapters")
    page.evaluate("window.__samePage = true")
    row = page.locator(f"#adapters-table tr[data-job-id='{gone['id']}']")
    expect(row).to_contain_text("4.0 KiB")
    answers: list[str] = []

    def answer(dialog, accept: bool) -> None:
        answers.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))  # "no": nothing happens
    row.get_by_role("button", name="Delete").click()
    assert "run, its metrics and log stay" in answers[0]
    expect(row).to_be_visible()
    page.once("dialog", lambda d: answer(d, True))
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    expect(page.locator(f"#adapters-table tr[data-job-id='{kept['id']}']")).to_be_visible()
    expect(page.locator("#action-error")).to_have_count(0)
    assert fake_server.get(f"/api/jobs/{gone['id']}")["adapter_path"] is None
    assert Path(gone["run_dir"]).is_dir() and not Path(gone["adapter_path"]).exists()

    # Deleted elsewhere meanwhile: the list says why, and drops the row.
    status, _ = fake_server.request("DELETE", f"/api/adapters/{kept['id']}")
    assert status == 200
    page.once("dialog", lambda d: answer(d, True))
    page.locator(f"#adapters-table tr[data-job-id='{kept['id']}']").get_by_role(
        "button", name="Delete").click()
    expect(page.locator("#action-error")).to_have_text(
        f"Delete failed: job {kept['id']} has no adapter (never saved, or deleted already)")
    expect(page.locator(f"#adapters-table tr[data-job-id='{kept['id']}']")).to_have_count(0)
    assert page.evaluate("window.__samePage") is True
    shot(page, "actions-03-adapters-refused", full_page=False)
    watch.check()
    context.close()
