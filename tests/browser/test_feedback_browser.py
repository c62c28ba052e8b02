"""Feedback in real Chromium against a real server and a real torch inference worker: a
finished run's adapter and its base model answer one playground prompt; A's answer is rated
👍 by a click, B's 👍 by Alt+↑ and flipped to 👎 by a key with the answer focused; A is then
corrected. The Feedback page
lists the three rows with the right labels, one is flipped, and the ticked rows become a
registered KTO dataset whose page exists and whose "Train on feedback" link carries the run."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers.browser import open_page, painted, shot, wait_js

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PROMPT = "Question: What is the capital of France?\nAnswer:"
ANSWER_MS = 180_000  # a torch worker's start (imports + load) on a busy 2-core machine


def rating(page, col: str) -> dict:
    """Column ``col``'s last answer: its reply id, rating id and which button is pressed."""
    return page.evaluate(f"""() => {{
      const all = document.querySelectorAll('#pg-col-{col} .pg-answer');
      const a = all[all.length - 1];
      const pressed = s => (a.querySelector(s) || {{}}).getAttribute &&
        a.querySelector(s).getAttribute('aria-pressed');
      return {{cid: a.dataset.completionId || null, fid: a.dataset.feedbackId || null,
               up: pressed('.fb-up'), down: pressed('.fb-down'),
               note: (a.querySelector('.fb-rate-note') || {{}}).textContent || ''}} }}""")


def feedback_of(server, cid: str) -> list[dict]:
    return [r for r in server.get("/api/feedback?limit=500") if r["completion_id"] == cid]


def test_rate_in_playground_then_make_a_dataset(browser, live_server, finished_job):
    from playwright.sync_api import expect

    adapter = f"tiny-demo@job-{finished_job['id']}"
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{live_server.url}/playground?model={adapter}")
    expect(page.locator("#pg-model-b")).to_have_value("tiny-demo")
    page.fill("#pg-max-tokens", "16")
    page.fill("#pg-prompt", PROMPT)
    page.press("#pg-prompt", "Control+Enter")
    wait_js(page, "document.querySelectorAll('.pg-answer .fb-rate').length === 2",
            timeout=ANSWER_MS)
    a, b = rating(page, "a"), rating(page, "b")
    assert a["cid"].startswith("chatcmpl-") and b["cid"].startswith("chatcmpl-"), (a, b)
    assert a["up"] == a["down"] == "false"
    up = page.locator("#pg-col-a .fb-up")
    assert "Alt+↑" in up.get_attribute("title")
    assert "Alt+↓" in page.locator("#pg-col-a .fb-down").get_attribute("title")

    # A: 👍 by a click. B: 👍 by Alt+↑ from the prompt (it rates the answer focused last),
    # then flipped to 👎 by the "-" key with its answer focused.
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("+")  # a key on a rated answer keeps it (a click would take it back)
    expect(page.locator("#pg-col-a .fb-rate-note")).to_have_text("already saved as good")
    expect(up).to_have_attribute("aria-pressed", "true")
    page.locator("#pg-col-b .pg-answer").focus()
    page.focus("#pg-prompt")
    page.press("#pg-prompt", "Alt+ArrowUp")
    expect(page.locator("#pg-col-b .fb-up")).to_have_attribute("aria-pressed", "true")
    assert page.input_value("#pg-prompt") == ""  # nothing typed
    page.locator("#pg-col-b .pg-answer").focus()
    page.keyboard.press("-")
    expect(page.locator("#pg-col-b .fb-down")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#pg-col-b .fb-up")).to_have_attribute("aria-pressed", "false")
    [ra] = feedback_of(live_server, a["cid"])
    [rb] = feedback_of(live_server, b["cid"])
    assert ra["label"] is True and ra["variant"] == adapter
    assert ra["job_id"] == finished_job["id"] and ra["source"] == "playground"
    assert rb["label"] is False and rb["variant"] == "tiny-demo" and rb["job_id"] is None
    assert ra["messages"] == [{"role": "user", "content": PROMPT}]
    painted(page)
    shot(page, "feedback-playground-rated", full_page=False)

    # A, corrected: the answer becomes 👎 and the correction a 👍 row of its own.
    page.locator("#pg-col-a .fb-correct").click()
    area = page.locator("#pg-col-a .fb-fix textarea")
    expect(area).to_be_focused()
    area.fill("Paris.")
    area.press("Control+Enter")
    expect(page.locator("#pg-col-a .fb-down")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#pg-col-a .fb-fix")).to_have_count(0)
    fixed = sorted(feedback_of(live_server, a["cid"]), key=lambda r: r["id"])
    assert [(r["label"], r["source"], r["id"] == ra["id"]) for r in fixed] == [
        (False, "playground", True), (True, "correction", False)]
    assert fixed[1]["answer"] == "Paris."
    ids = [ra["id"], fixed[1]["id"], rb["id"]]

    # The Feedback page lists them; B's row is flipped to 👍.
    page.goto(f"{live_server.url}/feedback")
    for id_, label in zip(ids, ("false", "true", "false"), strict=True):
        expect(page.locator(f"#fb-row-{id_}")).to_have_attribute("data-label", label)
    expect(page.locator(f"#fb-row-{fixed[1]['id']}")).to_contain_text("Paris.")
    expect(page.locator(f"#fb-row-{fixed[1]['id']}")).to_contain_text("correction")
    page.locator(f"#fb-row-{rb['id']} [data-action=flip]").click()
    expect(page.locator(f"#fb-row-{rb['id']}")).to_have_attribute("data-label", "true")
    assert [r["label"] for r in feedback_of(live_server, b["cid"])] == [True]
    total = live_server.get("/api/feedback/counts")
    expect(page.locator("[data-count=desirable]")).to_have_text(str(total["desirable"]))

    # Tick the three rows and make a dataset of them.
    for id_ in ids:
        page.locator(f"#fb-row-{id_} input[name=ids]").check()
    expect(page.locator("#fb-picked")).to_have_text("3 rows ticked")
    name = f"fb-{uuid.uuid4().hex[:8]}"
    page.fill("#fb-name", name)
    page.click("#fb-make-button")
    expect(page.locator("#fb-made-ok")).to_contain_text(f"{name} registered: 3 rows")
    train = page.locator("#fb-train").get_attribute("href")
    assert train.startswith(f"/jobs/new?dataset={name}&model=tiny-demo&init_adapter="
                            f"{finished_job['id']}&desirable_weight="), train
    dataset = live_server.get(f"/api/datasets/{name}")
    assert dataset["kind"] == "kto" and dataset["rows"] == 3
    assert dataset["stats"]["desirable"] == 2 and dataset["stats"]["undesirable"] == 1
    painted(page)
    shot(page, "feedback-page")
    page.click("#fb-made-link")
    expect(page.locator("h1")).to_contain_text(name)
    watch.check()
    context.close()
