"""Headless Chromium for the browser tests: Debian's chromium driven by Playwright, and what
every page test does with it (a watched page, a JS condition, a screenshot)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import ROOT

ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots for a person to look at (gitignored)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def launch():
    """Yield a launched browser; skip (naming the fix) where Playwright or chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


TRAIN_TIMEOUT_MS = 180_000
# Every Content-Security-Policy violation becomes a console error naming the element (the
# browser's own message does not say which one); Watch fails the test on it.
CSP_REPORTER = ("document.addEventListener('securitypolicyviolation', e => console.error("
                "'CSP violation:', e.violatedDirective, e.sourceFile + ':' + e.lineNumber, "
                "e.target && e.target.outerHTML ? e.target.outerHTML.slice(0, 200) : ''))")
LOSS_POINTS = "() => { const c = window.prospectJob && window.prospectJob.charts.loss; " \
              "return c && c.plot ? c.plot.data[0].length : 0 }"



class Watch:
    """Console errors, uncaught page errors and requests that leave 127.0.0.1."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{m.text} @ {m.location['url']}"))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", self._request)

    def _request(self, request) -> None:
        self.urls.append(request.url)
        parts = urlsplit(request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname != "127.0.0.1":
            self.foreign.append(request.url)

    def check(self) -> None:
        assert not self.errors, self.errors
        assert not self.foreign, self.foreign


def open_page(browser, scheme: str = "light", width: int = 1400, height: int = 1000):
    context = browser.new_context(color_scheme=scheme, viewport={"width": width,
                                                                "height": height})
    page = context.new_page()
    page.add_init_script(CSP_REPORTER)
    return context, page, Watch(page)


def wait_js(page, expression: str, timeout: float = 30_000) -> None:
    """Poll until `expression` is truthy. page.wait_for_function would eval the string inside
    the page, which the Content-Security-Policy refuses (no 'unsafe-eval'); page.evaluate
    goes through the DevTools protocol instead."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} still false after {timeout / 1000:.0f}s")
        time.sleep(0.1)


def painted(page) -> None:
    """Return once the page has painted twice more: what the last answers changed is drawn."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def shot(page, name: str, full_page: bool = True) -> None:
    """A screenshot in tests/artifacts/. Playwright hides the caret by giving the focused input
    a style attribute; htmx's history snapshot would then carry it and restoring it breaks the
    CSP. caret="initial" leaves the page as the person has it."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page, caret="initial")


def wait_log_end(page, server, job_id: int, timeout: float = 15_000) -> None:
    """Wait until the page's log tail shows the worker log's last line (job.js reads the log
    once more 1.5 s after `done`, for the worker's last lines)."""
    from playwright.sync_api import expect

    server.wait_job(job_id)  # the worker is gone: its log is complete
    text = server.get(f"/api/jobs/{job_id}/logs?offset=-4096")["text"]
    last = text.rstrip("\n").rsplit("\n", 1)[-1].strip()
    expect(page.locator("#log-tail")).to_contain_text(last, timeout=timeout)
