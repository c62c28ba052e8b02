"""The arena in real Chromium on a real server: a tiny KTO run that held rows out, the New
arena form started from the run (?job=N) creates the arena, the page follows the real
generate job until it ends, then the blind review is judged with the keys (←, 2, ↑, 4),
each key bringing the next pair by htmx, and the results table counts what the keys said."""

from __future__ import annotations

import pytest

from tests.helpers.arena import split_run
from tests.helpers.browser import open_page, painted, shot, wait_js
from tests.helpers.server import raw_get

pytestmark = [pytest.mark.browser, pytest.mark.slow]
KEYS = [("ArrowLeft", "left"), ("2", "right"), ("ArrowUp", "both_good"), ("4", "both_bad")]
GENERATE_MS = 240_000  # a torch worker's start and 8 short answers on a busy 2-core machine


def state(page) -> dict:
    return page.evaluate("""() => { const s = document.getElementById('arena-stage');
      return {state: s.dataset.state, pair: s.dataset.pair || null} }""")


def test_review_with_the_keyboard(browser, live_server):
    from playwright.sync_api import expect

    run = split_run(live_server)
    adapter = f"tiny-demo@job-{run['id']}"
    context, page, watch = open_page(browser, width=1280, height=900)
    page.goto(f"{live_server.url}/arenas?job={run['id']}")
    expect(page.locator("#arena-variant_a")).to_have_value(adapter)
    expect(page.locator("#arena-variant_b")).to_have_value("tiny-demo")
    expect(page.locator("input[name=source][value=split]")).to_be_checked()
    expect(page.locator("#arena-split")).to_have_value(str(run["id"]))
    expect(page.locator("#arena-prompts")).to_be_hidden()  # only the chosen source's fields
    page.fill("#arena-n", "4")
    page.fill("#arena-max-tokens", "12")
    page.get_by_role("button", name="Generate answers").click()
    page.wait_for_url("**/arenas/*")
    arena_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#arena-stage")).to_have_attribute("data-state", "generating")
    shot(page, "arena-generating", full_page=False)
    wait_js(page, "document.getElementById('arena-stage').dataset.state === 'review'",
            timeout=GENERATE_MS)
    stage = page.locator("#arena-stage")
    expect(stage).not_to_contain_text("tiny-demo")  # blind
    expect(page.locator("#arena-left .arena-text")).not_to_be_empty()
    painted(page)
    shot(page, "arena-review")

    seen = []
    for key, _ in KEYS:
        before = state(page)["pair"]
        assert before, state(page)
        seen.append(int(before))
        page.keyboard.press(key)
        wait_js(page, f"""(() => {{ const s = document.getElementById('arena-stage');
          return s.dataset.pair !== '{before}' }})()""")
    assert len(set(seen)) == 4
    expect(stage).to_have_attribute("data-state", "done")
    expect(stage).to_contain_text("All 4 pairs judged")
    results = page.locator("#arena-results")
    expect(results.locator("[data-col=judged]")).to_have_text("4")
    expect(results.locator("[data-col=ties]")).to_have_text("2")
    expect(results).to_contain_text(adapter)  # the names show in the results only
    painted(page)
    shot(page, "arena-results")

    # What each key said, in variant terms, from the feedback rows of each pair.
    rows = live_server.get("/api/feedback?source=arena&limit=500")
    api = live_server.get(f"/api/arenas/{arena_id}/results")
    assert api["judged"] == 4 and api["ties"] == 2 and api["wins"] + api["losses"] == 2
    for pair_id, (_, side) in zip(seen, KEYS, strict=True):
        labels = sorted(r["label"] for r in rows if r["arena_pair_id"] == pair_id)
        assert labels == {"left": [False, True], "right": [False, True],
                          "both_good": [True, True], "both_bad": [False, False]}[side]

    # The list: the arena with its score.
    page.goto(f"{live_server.url}/arenas")
    row = page.locator("#arena-list tbody tr", has_text=f"#{arena_id}")
    expect(row).to_contain_text("4 / 4")
    expect(row).to_contain_text(f"{api['win_rate'] * 100:.0f} %")
    painted(page)
    shot(page, "arenas-list", full_page=False)

    watch.check()
    context.close()
    # The run's page includes the arena (its fragment).
    status, body = raw_get(live_server, f"/jobs/{run['id']}/arena")
    assert status == 200 and b"(this run)" in body and f"/arenas/{arena_id}".encode() in body
