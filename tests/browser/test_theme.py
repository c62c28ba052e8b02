"""Every page in real Chromium, light and dark (following the system's colour scheme), at a
laptop (1366 px) and a tablet (768 px) width: no request leaves the server's origin, no
console or CSP error, no sideways scroll, the theme really changes; and the job page can be
worked with the keyboard alone (tab order reaches the actions, focus is visible).
Screenshots land in tests/artifacts/theme-*.png for a person to look at."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.helpers.browser import open_page, painted, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]



def pages(job_id: int) -> list[str]:
    return ["/", "/jobs/new", f"/jobs/{job_id}", f"/jobs/new?from={job_id}", "/compare",
            "/datasets", "/datasets/demo-kto", "/adapters", "/models", "/playground"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1366, 768])
def test_every_page_same_origin_no_errors_no_sideways_scroll(browser, live_server, finished_job,
                                                             scheme, width):
    context, page, watch = open_page(browser, scheme, width=width, height=900)
    origin = urlsplit(live_server.url)
    backgrounds = set()
    for path in pages(finished_job["id"]):
        resp = page.goto(live_server.url + path)
        assert resp.status == 200, (path, resp.status)
        page.wait_for_load_state("networkidle")
        painted(page)
        name = path.strip("/").replace("/", "-").replace("?", "-").replace("=", "") or "jobs"
        shot(page, f"theme-{scheme}-{width}-{name}", full_page=False)
        scroll = page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width, f"{path} scrolls sideways at {width}px ({scroll}px wide)"
        backgrounds.add(page.evaluate("getComputedStyle(document.body).backgroundColor"))
    for url in watch.urls:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob"):
            continue
        assert (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), url
    watch.check()
    dark = page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    assert dark == (scheme == "dark")
    (bg,) = backgrounds  # one theme, the same on every page
    rgb = [int(v) for v in bg[bg.index("(") + 1: bg.index(")")].split(",")[:3]]
    assert (sum(rgb) < 120) == (scheme == "dark"), bg
    context.close()


def test_job_page_keyboard_reachable_with_visible_focus(browser, live_server, finished_job):
    context, page, watch = open_page(browser, "light", width=1366)
    page.goto(f"{live_server.url}/jobs/{finished_job['id']}")
    page.wait_for_load_state("networkidle")
    reached, outlines = [], {}
    for _ in range(40):
        page.keyboard.press("Tab")
        info = page.evaluate("""() => { const el = document.activeElement;
            const cs = getComputedStyle(el);
            return [el.dataset.action || el.id || el.textContent.trim().slice(0, 20),
                    cs.outlineStyle + ' ' + cs.outlineWidth]; }""")
        reached.append(info[0])
        outlines[info[0]] = info[1]
    for wanted in ("clone", "fuse", "delete", "log-follow", "log-tail", "Download"):
        assert wanted in reached, (wanted, reached)
    assert reached.index("clone") < reached.index("delete") < reached.index("log-tail")
    for name in ("clone", "delete", "log-tail", "Download"):
        assert not outlines[name].startswith("none"), (name, outlines[name])
    page.keyboard.press("Shift+Tab")
    shot(page, "theme-keyboard-focus", full_page=False)
    watch.check()
    context.close()
