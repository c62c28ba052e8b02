"""The planner's verdict on the new-job form, in real Chromium against the real server."""

from __future__ import annotations

import pytest

from tests.helpers.browser import ARTIFACTS

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def server(plan_server):
    return plan_server


def test_the_form_shows_the_verdict(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    try:
        page = context.new_page()
        page.goto(server.url + "/jobs/new")
        result = page.locator("#plan-result [data-verdict]")
        result.wait_for(timeout=15000)
        assert result.get_attribute("data-verdict") == "fits"
        # Changing a field re-plans: a model that cannot fit.
        page.fill("#f-model-text", server.huge)
        page.locator("#f-model-text").dispatch_event("change")
        page.wait_for_selector("#plan-result [data-verdict=\"won't fit\"]", timeout=15000)
        # the verdict also sits beside the page's Start button, where no scrolling is needed
        page.wait_for_selector("#plan-chip.plan-wont-fit", timeout=15000)
        assert "won't fit" in page.inner_text("#plan-chip").lower()
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#plan-result").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "plan-form-wont-fit.png"), full_page=True)
        # Submitting shows the refusal beside a "start anyway" box.
        page.click("button[type=submit] >> nth=-1")
        page.wait_for_selector("#plan-refused", timeout=15000)
        assert page.locator("#f-force").count() == 1
        page.screenshot(path=str(ARTIFACTS / "plan-form-refused.png"), full_page=True)
        # A preset fills the form with its backend, model and knobs.
        page.select_option("#f-preset", "mlx-qwen2.5-3b")
        page.wait_for_selector('#f-model-text[value="Qwen/Qwen2.5-3B-Instruct"]',
                               timeout=15000)
        assert page.locator("#f-method").input_value() == "mlx/sft"
        assert page.locator("#f-batch_size").input_value() == "8"
        page.locator("#plan-result [data-verdict]").wait_for(timeout=15000)
        page.screenshot(path=str(ARTIFACTS / "plan-form-preset.png"), full_page=True)
    finally:
        context.close()
