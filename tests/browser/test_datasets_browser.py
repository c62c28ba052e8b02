"""The Datasets pages in real headless Chromium: a bad upload shows its rows, a good one lands
on its page with stats and a coloured preview, token lengths come in place, and picking the
dataset in the new-job form sets its KTO weights. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import json

import pytest

from tests.helpers.browser import open_page, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.",
         "rejected": "Figure it out yourself."} for i in range(6)]
ROWS += [{"prompt": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": f"Name a colour ({i})."}],
          "chosen": [{"role": "assistant", "content": "Blue."}],
          "rejected": [{"role": "assistant", "content": "No."}]} for i in range(2)]



def test_upload_check_preview_and_pick(browser, live_server, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "q", "completion": "a", "label": true}\n'
                   '{"prompt": "q", "completion": "", "label": false}\n'
                   '{"prompt": "q", "completion": "a", "label": "maybe"}\nnot json\n')
    good = tmp_path / "arith prefs.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    context, page, watch = open_page(browser)
    page.goto(live_server.url + "/datasets")
    expect(page.locator("h1")).to_have_text("Datasets")
    expect(page.locator(".ds-table")).to_contain_text("demo-kto")

    page.set_input_files("#ds-file", str(bad))
    page.click("#dataset-add form[action='/datasets/upload'] button[type=submit]")
    errors = page.locator("#ds-error")
    expect(errors).to_contain_text("3 problems in 4 rows")
    expect(errors.locator("li")).to_have_count(3)
    expect(errors.locator("li").nth(1)).to_contain_text("row 3")
    assert page.url.endswith("/datasets")
    shot(page, "20-datasets-upload-error-light")

    page.set_input_files("#ds-file", str(good))
    page.fill("#ds-name", "arith-prefs")
    page.click("#dataset-add form[action='/datasets/upload'] button[type=submit]")
    page.wait_for_url("**/datasets/arith-prefs")
    expect(page.locator(".facts").first).to_contain_text("paired")
    expect(page.locator(".facts").first).to_contain_text("16 from 8 in the file")
    expect(page.locator(".ds-good-text").first).to_contain_text("8 desirable")
    # The balance bar's width comes from data-width (no inline style under the CSP).
    width = page.evaluate("document.querySelector('.ds-bar-good').style.width")
    assert width == "50%"
    cards = page.locator(".ds-preview > li")
    expect(cards).to_have_count(16)
    expect(cards.nth(0)).to_have_class("ds-card ds-good")
    expect(cards.nth(1)).to_have_class("ds-card ds-bad")
    expect(cards.nth(12).locator(".ds-role-system")).to_contain_text("Be brief.")

    page.fill("#tk-max", "16")
    page.click("form[hx-get$='/tokens'] button[type=submit]")
    expect(page.locator("#token-result")).to_contain_text("rows are longer than 16 tokens")
    expect(page.locator("#token-result table")).to_contain_text("prompt + completion")
    shot(page, "21-dataset-light")

    # A file on this machine, by path; then deleted from its page (after the confirm).
    local = live_server.home / "local sft.csv"
    local.write_text("text\nUser: hi\nAssistant: hello\n\"two, lines\"\n")
    page.goto(live_server.url + "/datasets")
    page.fill("#ds-path", str(local))
    page.fill("#ds-reg-name", "local-sft")
    page.click("#dataset-add form[action='/datasets/register'] button[type=submit]")
    page.wait_for_url("**/datasets/local-sft")
    expect(page.locator(".facts").first).to_contain_text("sft-text")
    expect(page.locator(".ds-preview > li")).to_have_count(3)
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("button.danger:has-text('Delete')")
    page.wait_for_url("**/datasets")
    expect(page.locator(".ds-table")).not_to_contain_text("local-sft")
    assert local.is_file()  # read in place: the person's file stays
    watch.check()
    context.close()

    for scheme, width, name in (("dark", 1400, "23-dataset-dark"),
                                ("light", 800, "24-dataset-tablet")):
        context, page, watch = open_page(browser, scheme=scheme, width=width)
        page.goto(live_server.url + "/datasets/arith-prefs")
        expect(page.locator(".ds-preview > li")).to_have_count(16)
        shot(page, name)
        page.goto(live_server.url + "/datasets")
        shot(page, name.replace("dataset-", "datasets-"))
        watch.check()
        context.close()


def test_picking_a_dataset_sets_the_kto_weights(browser, live_server):
    from playwright.sync_api import expect

    from tests.helpers.data import jsonl
    from tests.helpers.server import upload

    rows = [{"prompt": f"q{i}", "completion": "a", "label": i < 5} for i in range(20)]
    assert upload(live_server, "few-good", jsonl(rows), "few.jsonl")[0] == 201
    context, page, watch = open_page(browser)
    page.goto(live_server.url + "/jobs/new")
    page.select_option("#f-dataset", "few-good")
    expect(page.locator("#dataset-balance")).to_contain_text("5 desirable / 15 undesirable")
    expect(page.locator("#f-desirable_weight")).to_have_value("3.0")
    expect(page.locator("#f-undesirable_weight")).to_have_value("1.0")
    page.locator("#f-desirable_weight").scroll_into_view_if_needed()
    shot(page, "22-new-job-dataset-weights-light", full_page=False)
    page.select_option("#f-dataset", "demo-kto")
    expect(page.locator("#dataset-balance")).to_contain_text("176 desirable / 144 undesirable")
    expect(page.locator("#f-desirable_weight")).to_have_value("1.0")
    watch.check()
    context.close()
