"""The new-job form in real Chromium at 1366 px: what it shows and what it submits (issue 18).

A server of its own over a copy of the demo home, whose workers are `/bin/false`: a submitted
job is stored with exactly the params the form sent (read back through the API) and then
fails at once, so no training competes with the test. Screenshots of the form for each
backend/method go to tests/artifacts/form-*.png.
"""

from __future__ import annotations

import re
import shutil
from urllib.parse import parse_qs

import pytest

from app.web.job_form import DEMO_DEFAULTS
from tests.helpers.browser import open_page, shot
from tests.helpers.server import kill_workers, make_server

pytestmark = [pytest.mark.browser]
WIDTH = 1366
T = 20_000  # ms: htmx swaps on a loaded 2-core machine


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("form-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    hub = tmp_path_factory.mktemp("empty-hub")  # no model of this machine's cache counts
    s = make_server(home, PROSPECT_PYTHON="/bin/false", HF_HUB_CACHE=str(hub))
    s.start()
    yield s
    kill_workers(s)
    s.stop()


@pytest.fixture()
def form(browser, server):
    context, page, watch = open_page(browser, width=WIDTH, height=900)
    page.goto(server.url + "/jobs/new")
    page.locator("#plan-result [data-verdict]").wait_for(timeout=T)
    page.watch = watch
    yield page
    watch.check()
    context.close()


def choose_method(page, key: str) -> None:
    page.select_option("#f-method", key)
    page.locator(f'#knobs[data-method="{key}"]').wait_for(timeout=T)
    page.locator("#plan-result [data-verdict]").wait_for(timeout=T)


def submit(page, server) -> tuple[dict, dict]:
    """Press Start; return (the fields the browser posted, the job the server stored)."""
    from playwright.sync_api import expect

    page.watch.check()  # the form itself: no error so far
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/jobs/new")) \
            as req:
        page.click("#job-form button[type=submit]")
    posted = parse_qs(req.value.post_data, keep_blank_values=True)
    expect(page).to_have_url(re.compile(r".*/jobs/\d+$"), timeout=T)
    job = server.get(f"/api/jobs/{page.url.rsplit('/', 1)[1]}")
    # The job page is another test's: its worker (/bin/false) dies while the page opens its
    # event stream, which the SSE extension logs as an error.
    page.goto("about:blank")
    page.watch.errors.clear()
    return posted, job


def test_the_knobs_follow_the_method_and_the_job_runs_what_is_shown(form, server):
    from playwright.sync_api import expect

    page = form
    demo = DEMO_DEFAULTS[("torch", "kto")]
    expect(page.get_by_test_id("demo-defaults")).to_be_visible()
    expect(page.locator("#f-max_steps")).to_have_value(str(demo["max_steps"]))
    expect(page.locator("#f-logging_steps")).to_have_value("1")
    expect(page.locator("#method-help")).to_contain_text("TRL's KTOTrainer")
    expect(page.get_by_test_id("plan-length")).to_contain_text(f"{demo['max_steps']} steps")
    shot(page, "form-torch-kto")

    page.fill("#f-max_steps", "30")  # the run: 30 steps, then mlx · SFT
    choose_method(page, "mlx/sft")
    expect(page.locator("#f-max_steps")).to_have_count(0)
    expect(page.locator("#f-per_device_train_batch_size")).to_have_count(0)
    expect(page.locator("#f-iters")).to_have_value("30")  # carried over
    expect(page.locator("#f-batch_size")).to_have_value("4")  # mlx's own default
    expect(page.locator("#f-compile")).to_be_checked()
    expect(page.locator("#method-help")).to_contain_text("mlx-lm")
    expect(page.locator("#method-help")).not_to_contain_text("KTOTrainer")
    expect(page.get_by_test_id("plan-length")).to_contain_text("30 steps")
    shot(page, "form-mlx-sft")

    choose_method(page, "mlx/kto")
    expect(page.locator("#f-iters")).to_have_value("30")
    expect(page.locator("#f-beta")).to_have_value("0.1")
    expect(page.locator("#f-compile")).to_be_checked()  # MLX KTO compiles its step too
    shot(page, "form-mlx-kto")

    choose_method(page, "mlx/sft")
    posted, job = submit(page, server)
    assert "params.max_steps" not in posted and posted["params.iters"] == ["30"]
    assert posted["params.compile"] == ["false", "true"]  # the marker, then the ticked box
    assert (job["backend"], job["method"]) == ("mlx", "sft")
    assert job["params"]["iters"] == 30 and job["params"]["compile"] is True


def test_a_stale_form_is_refused_beside_the_method(form, server):
    """Where the swap never came (the request lost, or Start pressed first), the server
    refuses torch's knobs for an MLX job, beside Backend / method; nothing is queued."""
    from playwright.sync_api import expect

    page = form
    before = len(server.get("/api/jobs?limit=1000"))
    stalled = []  # the swap's request never answers: a slow link, or Start pressed first
    page.route("**/fragments/job-form/knobs", lambda route: stalled.append(route))
    with page.expect_request(lambda r: "/fragments/job-form/knobs" in r.url, timeout=T):
        page.select_option("#f-method", "mlx/sft")
    page.fill("#f-max_steps", "30")
    page.click("#job-form button[type=submit]")
    error = page.locator("#err-method")
    expect(error).to_contain_text("nothing was started", timeout=T)
    expect(error).to_contain_text("max_steps")
    expect(page.locator("#f-iters")).to_have_value("30")  # now the right knobs, carried
    assert len(server.get("/api/jobs?limit=1000")) == before
    shot(page, "form-stale-refused")
    for route in stalled:  # answered at last, with nothing to swap (an abort is logged)
        route.fulfill(status=204, body="")


def test_the_demo_defaults_are_what_is_submitted(form, server):
    posted, job = submit(form, server)
    for name, value in DEMO_DEFAULTS[("torch", "kto")].items():
        assert job["params"][name] == value, name
    assert posted["params.gradient_checkpointing"] == ["false", "true"]
    assert job["params"]["gradient_checkpointing"] is True


def test_every_error_at_once_and_models_that_are_not_here(form, server):
    from playwright.sync_api import expect

    page = form
    preset = page.locator('#f-preset option[value="torch-qwen2-0.5b"]')
    assert "not downloaded" in preset.inner_text()
    page.select_option("#f-preset", "torch-qwen2-0.5b")
    page.locator('#f-model-text[value="Qwen/Qwen2-0.5B-Instruct"]').wait_for(timeout=T)
    missing = page.get_by_test_id("model-missing")
    expect(missing).to_contain_text("hf download Qwen/Qwen2-0.5B-Instruct", timeout=T)
    plan = page.locator("#plan-result [data-verdict]")
    expect(plan).to_have_attribute("data-missing", "true", timeout=T)
    expect(page.locator("#plan-chip")).to_contain_text("not downloaded")
    expect(page.locator("#f-learning_rate")).to_have_value("5e-07")  # the seed's, not the demo's
    shot(page, "form-preset-not-here")

    page.fill("#f-target_modules", "")
    page.fill("#f-dataset-text", "/nowhere/data.jsonl")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#err-model")).to_contain_text("hf download Qwen/Qwen2-0.5B-Instruct",
                                                       timeout=T)
    expect(page.locator("#err-dataset")).to_be_visible()
    expect(page.locator("#err-params-target_modules")).to_contain_text("must not be empty")
    expect(page.locator(".field-error")).to_have_count(3)
    shot(page, "form-all-errors")


def test_sizes_agree_in_gib_on_one_screen(form):
    from playwright.sync_api import expect

    page = form
    strip = page.get_by_test_id("sys-memory")
    expect(strip).to_contain_text("GiB", timeout=T)
    page.click(".plan-details summary")
    plan_text = page.locator("#plan-result").inner_text()
    strip_text = strip.inner_text()
    for text in (plan_text, strip_text):
        assert not re.search(r"\d (GB|MB|KB)\b", text), text
    total = re.search(r"free of ([\d.]+ GiB)", strip_text).group(1)
    assert f"of {total} RAM free now" in plan_text, (total, plan_text)  # the same machine
    assert "0.00 B" not in plan_text and re.search(r"\d+ K parameters", plan_text)
