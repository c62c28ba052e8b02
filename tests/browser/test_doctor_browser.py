"""The System page's Health panel in headless Chromium against the real server: the panel
fills itself from the doctor (real probes: torch and mlx imported in child processes)."""

from __future__ import annotations

import pytest

from tests.helpers.browser import open_page, shot

pytestmark = [pytest.mark.browser]


def test_health_panel_fills_in_with_every_check(browser, live_server):
    from playwright.sync_api import expect

    context, page, watch = open_page(browser)
    page.goto(live_server.url + "/system")
    expect(page.locator('nav a[aria-current="page"]')).to_have_text("System")
    # The checks import each backend in a child process: seconds on a busy machine.
    expect(page.get_by_test_id("health-summary")).to_be_visible(timeout=120_000)
    expect(page.locator('tr[data-check="torch"]')).to_contain_text("on cpu")
    expect(page.locator('tr[data-check="MLX"]')).to_contain_text("on cpu")
    expect(page.locator('tr[data-check="Hub"]')).to_contain_text("offline")
    names = page.locator("tr[data-check]").evaluate_all(
        "rows => rows.map(r => r.dataset.check)")
    assert names[:5] == ["Python", "Versions", "torch", "bf16", "MLX"], names
    assert "API token" in names
    # The strip's Health link leads here from every page.
    page.goto(live_server.url + "/")
    page.get_by_test_id("sys-health").click()
    expect(page).to_have_url(live_server.url + "/system")
    expect(page.get_by_test_id("health-summary")).to_be_visible(timeout=120_000)
    shot(page, "30-system-health")
    watch.check()
    context.close()
