"""The whole "Teach it" loop in real Chromium on a real server with real tiny torch workers:
a finished run's adapter answers in the playground → its answers are rated 👍 and the base
model's 👎 → the Feedback page makes a KTO dataset of them → *Train on feedback* opens the
new-job form filled with that dataset, the run's adapter as init_adapter and the advisor's
weights → the new run trains from the adapter and its adapter is listed → an arena compares
the new adapter with the old one, judged with the keyboard, and its result is counted."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.helpers.browser import open_page, painted, shot, wait_js

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PROMPTS = ["Question: What is the capital of France?\nAnswer:",
           "Question: What colour is the sky?\nAnswer:"]
ANSWER_MS = 180_000  # a torch worker's start (imports + load) on a busy 2-core machine
GENERATE_MS = 240_000
# The new run: tiny and quick; the rest of its form stays as Train on feedback filled it.
TRAIN = {"max_steps": "2", "gradient_accumulation_steps": "1", "logging_steps": "1",
         "max_length": "96", "learning_rate": "0.0001"}


def feedback_ids(server, cids: set[str]) -> list[int]:
    return [r["id"] for r in server.get("/api/feedback?limit=500") if r["completion_id"] in cids]


def ask(page, prompt: str, turn: int) -> set[str]:
    """Send one prompt to both columns; when both answers finish, rate column A's 👍 by a
    click and B's 👎 by the key with its answer focused; return both reply ids."""
    from playwright.sync_api import expect

    page.fill("#pg-prompt", prompt)
    page.press("#pg-prompt", "Control+Enter")
    wait_js(page, f"document.querySelectorAll('.pg-answer .fb-rate').length === {2 * turn}",
            timeout=ANSWER_MS)
    up = page.locator("#pg-col-a .pg-answer").last.locator(".fb-up")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    b = page.locator("#pg-col-b .pg-answer").last
    b.focus()
    page.keyboard.press("-")
    expect(b.locator(".fb-down")).to_have_attribute("aria-pressed", "true")
    return set(page.evaluate("""() => ['a', 'b'].map(c => [...document.querySelectorAll(
      `#pg-col-${c} .pg-answer`)].pop().dataset.completionId)"""))


def test_feedback_trains_the_next_run_and_the_arena_judges_it(browser, live_server,
                                                              finished_job):
    from playwright.sync_api import expect

    old = finished_job["id"]
    old_adapter = f"tiny-demo@job-{old}"
    context, page, watch = open_page(browser, width=1366, height=900)

    # 1. The playground: the run's adapter (A) and its base (B), two prompts, rated.
    page.goto(f"{live_server.url}/playground?model={old_adapter}")
    expect(page.locator("#pg-model-b")).to_have_value("tiny-demo")
    page.fill("#pg-max-tokens", "12")
    cids = set()
    for turn, prompt in enumerate(PROMPTS, start=1):
        cids |= ask(page, prompt, turn)
    ids = feedback_ids(live_server, cids)
    assert len(ids) == 4, ids

    # 2. The Feedback page: tick the four rows, make a dataset.
    page.goto(f"{live_server.url}/feedback")
    for id_ in ids:
        page.locator(f"#fb-row-{id_} input[name=ids]").check()
    name = f"loop-{uuid.uuid4().hex[:8]}"
    page.fill("#fb-name", name)
    page.click("#fb-make-button")
    expect(page.locator("#fb-made-ok")).to_contain_text(f"{name} registered: 4 rows")
    dataset = live_server.get(f"/api/datasets/{name}")
    assert dataset["stats"]["desirable"] == 2 and dataset["stats"]["undesirable"] == 2

    # 3. Train on feedback: the form comes filled with the dataset, model and adapter.
    page.click("#fb-train")
    page.wait_for_url("**/jobs/new?*")
    expect(page.locator("#f-init_adapter")).to_have_value(str(old))
    assert name in page.locator("#job-form").inner_html()
    for knob, value in TRAIN.items():
        page.evaluate("([id, v]) => { document.getElementById(id).value = v }",
                      [f"f-{knob}", value])
    page.locator("#job-form").get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    new = int(page.url.rstrip("/").rsplit("/", 1)[1])
    job = live_server.wait_job(new)
    assert job["status"] == "succeeded", job
    assert job["dataset"] == name and job["params"]["init_adapter"].endswith("adapter")
    assert job["params"]["max_steps"] == 2

    # 4. Its adapter is listed.
    page.goto(f"{live_server.url}/adapters")
    expect(page.locator("body")).to_contain_text(f"#{new}")

    # 5. The arena: the new adapter (A) against the old one (B) on pasted prompts.
    page.goto(f"{live_server.url}/arenas?job={new}")
    expect(page.locator("#arena-variant_a")).to_have_value(f"tiny-demo@job-{new}")
    page.select_option("#arena-variant_b", old_adapter)
    page.check("input[name=source][value=prompts]")
    page.fill("#arena-prompts", "\n".join(PROMPTS))
    page.fill("#arena-n", "2")
    page.fill("#arena-max-tokens", "12")
    page.get_by_role("button", name="Generate answers").click()
    page.wait_for_url("**/arenas/*")
    arena_id = int(page.url.rsplit("/", 1)[1])
    wait_js(page, "document.getElementById('arena-stage').dataset.state === 'review'",
            timeout=GENERATE_MS)
    for key in ("ArrowLeft", "ArrowUp"):
        before = page.evaluate("document.getElementById('arena-stage').dataset.pair")
        page.keyboard.press(key)
        wait_js(page, f"document.getElementById('arena-stage').dataset.pair !== '{before}'")
    stage = page.locator("#arena-stage")
    expect(stage).to_have_attribute("data-state", "done")
    results = page.locator("#arena-results")
    expect(results.locator("[data-col=judged]")).to_have_text("2")
    expect(results).to_contain_text(f"tiny-demo@job-{new}")
    expect(results).to_contain_text(old_adapter)
    painted(page)
    shot(page, "teach-loop-arena")
    api = live_server.get(f"/api/arenas/{arena_id}/results")
    assert api["judged"] == 2 and api["ties"] == 1 and api["wins"] + api["losses"] == 1
    watch.check()
    context.close()
