"""The playground in real Chromium against a real server and a real torch inference worker:
a finished run's adapter beside its base model, one prompt to both, each column streams its
answer and finishes with tokens, time to first token and tokens/s; the loaded-models panel
shows the worker, Unload empties it; Stop aborts both answers (the server cancels) and the
next prompt is answered again, each column with its own history."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers.browser import open_page, shot, wait_js

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PROMPT = "Question: What is the capital of France?\nAnswer:"  # as the demo data asks
MAX_TOKENS = 48
ANSWER_MS = 180_000  # a torch worker's start (imports + load) on a busy 2-core machine

# Each answer's data-state as it changes (waiting is where it starts), per column.
RECORD_STATES = """() => {
  window.__pgStates = {a: [], b: []};
  new MutationObserver(ms => ms.forEach(m => {
    const col = m.target.closest('.pg-col');
    if (col && m.target.classList.contains('pg-answer'))
      window.__pgStates[col.dataset.col].push(m.target.dataset.state);
  })).observe(document.getElementById('playground'),
              {attributes: true, subtree: true, attributeFilter: ['data-state']});
}"""


def answers(page) -> list[dict]:
    """Every answer of both columns: column, state, text, stats, error."""
    return page.evaluate("""() => [...document.querySelectorAll('.pg-answer')].map(a => ({
      col: a.closest('.pg-col').dataset.col, state: a.dataset.state,
      text: a.querySelector('.pg-text').textContent,
      stats: Object.fromEntries([...a.querySelectorAll('[data-stat]')].map(
        s => [s.dataset.stat, s.querySelector('b').textContent])),
      error: (a.querySelector('.pg-error') || {}).textContent || null}))""")


def wait_answered(page, count: int) -> list[dict]:
    """Wait until each column has `count` answers and none is still waiting or streaming,
    and the page takes a prompt again."""
    wait_js(page, f"""(() => {{ const all = [...document.querySelectorAll('.pg-answer')];
      return all.length === {2 * count} && all.every(a => !['waiting', 'streaming']
        .includes(a.dataset.state)) && !document.getElementById('pg-send').disabled }})()""",
            timeout=ANSWER_MS)
    return answers(page)


def why(server, found: list[dict]) -> str:
    """Each answer's state and error, and the end of the server's and the workers' logs."""
    lines = [f"{a['col']}: {a['state']} {a['error'] or ''}" for a in found]
    logs = [server.log_path, *sorted((server.home / "inference").glob("*.log"))]
    for path in logs:
        if path and path.is_file():
            lines.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
    return "\n".join(lines)


def by_column(found: list[dict]) -> dict[str, list[dict]]:
    return {col: [a for a in found if a["col"] == col] for col in ("a", "b")}


def loaded_models(page) -> list[str]:
    return page.evaluate("() => [...document.querySelectorAll('#pg-loaded-body tr[data-model]')]"
                         ".map(r => r.dataset.model)")


def test_side_by_side_stream_unload_stop(browser, live_server, finished_job):
    from playwright.sync_api import expect

    adapter = f"tiny-demo@job-{finished_job['id']}"
    live_server.post("/api/inference/unload", {"model": None, "backend": None})
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{live_server.url}/playground?model={adapter}")
    expect(page.locator("#pg-model-a")).to_have_value(adapter)
    expect(page.locator("#pg-model-b")).to_have_value("tiny-demo")  # its base, by default
    expect(page.locator("#pg-note-a")).to_contain_text("adapter on tiny-demo")
    expect(page.locator("#pg-loaded-body")).to_contain_text("Nothing loaded")
    page.evaluate(RECORD_STATES)

    # One prompt, both columns: Ctrl+Enter sends.
    expect(page.locator("#pg-max-tokens")).to_have_value("256")  # the defaults: greedy
    expect(page.locator("#pg-temperature")).to_have_value("0")
    page.fill("#pg-max-tokens", str(MAX_TOKENS))  # a shorter answer: a quicker test
    page.fill("#pg-prompt", PROMPT)
    page.press("#pg-prompt", "Control+Enter")
    expect(page.locator("#pg-stop")).to_be_enabled()
    first = wait_answered(page, 1)
    for answer in first:
        assert answer["state"] == "done", why(live_server, first)
        assert answer["text"], answer
        assert 0 < int(answer["stats"]["tokens"]) <= MAX_TOKENS, answer
        assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", answer["stats"]["TTFT"]), answer
        assert float(answer["stats"]["tokens/s"]) > 0, answer
        assert answer["stats"]["finish"] in ("stop", "length"), answer
    states = page.evaluate("window.__pgStates")
    assert "streaming" in states["a"] and "streaming" in states["b"], states
    assert states["a"][-1] == "done" and states["b"][-1] == "done", states
    expect(page.locator("#pg-stop")).to_be_disabled()
    # The answers are the API's: greedy, so the same request through /v1 gives the same text.
    said = page.evaluate("window.prospectPlayground.turns()")[0]["answers"]
    for col, model in (("a", adapter), ("b", "tiny-demo")):
        status, body = live_server.post("/v1/chat/completions", {
            "model": model, "temperature": 0, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": PROMPT}]})
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == said[col]["text"], (model, said)

    # The loaded-models panel: one worker (the base model serves both columns), with memory.
    wait_js(page, "document.querySelectorAll('#pg-loaded-body tr[data-model]').length === 1")
    assert loaded_models(page) == ["tiny-demo"]
    row = page.locator("#pg-loaded-body tr[data-model]")
    expect(row).to_contain_text("torch")
    expect(row.locator("td.num.mono")).to_contain_text("iB")
    shot(page, "playground", full_page=False)

    # Unload: the worker goes and the panel empties.
    row.get_by_role("button", name="Unload").click()
    expect(page.locator("#pg-loaded-body")).to_contain_text("Nothing loaded", timeout=30_000)
    assert not live_server.get("/api/inference")["workers"]

    # Stop while the model loads again: both answers stop, nothing is left waiting.
    page.fill("#pg-prompt", "Name a colour.")
    page.click("#pg-send")
    expect(page.locator("#pg-log-a .pg-answer").nth(1)).to_have_attribute("data-state", "waiting")
    page.click("#pg-stop")
    found = wait_answered(page, 2)
    second = by_column(found)
    assert [a["state"] for a in second["a"]] == ["done", "stopped"], why(live_server, found)
    assert [a["state"] for a in second["b"]] == ["done", "stopped"], why(live_server, found)

    # The next prompt is answered; each column sent its own history (the stopped turn too).
    requests: list[dict] = []
    page.on("request", lambda r: requests.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    page.fill("#pg-prompt", "And of Italy?")
    page.click("#pg-send")
    found = wait_answered(page, 3)
    third = by_column(found)
    assert [a["state"] for a in third["a"] + third["b"]].count("done") == 4, \
        why(live_server, found)
    by_model = {r["model"]: r for r in requests}
    assert set(by_model) == {adapter, "tiny-demo"}
    for col, model in (("a", adapter), ("b", "tiny-demo")):
        msgs = by_model[model]["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
        assert msgs[0]["content"] == PROMPT and msgs[4]["content"] == "And of Italy?"
        assert msgs[1]["content"] == said[col]["text"]  # this column's own answer
        assert by_model[model]["stream"] is True and by_model[model]["temperature"] == 0
        assert by_model[model]["max_tokens"] == MAX_TOKENS

    # Clear: a new conversation. A prompt longer than the model's context: the API's error
    # (its message names the token count and the limit) in each column.
    page.click("#pg-clear")
    expect(page.locator(".pg-answer")).to_have_count(0)
    page.fill("#pg-prompt", "tell me more " * 800)
    page.click("#pg-send")
    errors = wait_answered(page, 1)
    assert [a["state"] for a in errors] == ["error", "error"], why(live_server, errors)
    assert all("1024" in a["error"] for a in errors), errors
    # Chromium logs each refused request as a console error: those two are expected.
    refused = [e for e in watch.errors if "status of 422" in e and "/v1/chat/completions" in e]
    assert len(refused) == 2, watch.errors
    watch.errors = [e for e in watch.errors if e not in refused]
    watch.check()
    context.close()
