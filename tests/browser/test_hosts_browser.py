"""The System page's Hosts section in headless Chromium against a real server: a host added
is listed (and saved: GET /api/settings/hosts), a refusal shows beside its field with what was
typed kept, a host removed is gone. Its own server over an empty home, so the shared one's
MLX jobs never see these hosts."""

from __future__ import annotations

import pytest

from tests.helpers.browser import open_page, shot
from tests.helpers.server import make_server

pytestmark = [pytest.mark.browser]


@pytest.fixture()
def server(tmp_path):
    (tmp_path / "home").mkdir()
    server = make_server(tmp_path / "home")
    server.start()
    yield server
    server.stop()


def add(page, name: str, ssh: str, ips: str) -> None:
    page.fill("#host-name", name)
    page.fill("#host-ssh", ssh)
    page.fill("#host-ips", ips)
    page.get_by_role("button", name="Add host").click()


def test_hosts_add_listed_remove(browser, server):
    from playwright.sync_api import expect

    context, page, watch = open_page(browser)
    page.goto(server.url + "/system")
    section = page.get_by_test_id("hosts-section")
    expect(section.get_by_test_id("hosts-empty")).to_be_visible()
    add(page, "here", "127.0.0.1", "192.168.1.10")
    expect(page.locator('tr[data-host="here"]')).to_contain_text("(this Mac)")
    # The ring backend needs an IP: the refusal sits under the IPs field, the rest kept.
    add(page, "studio", "studio.local", "")
    expect(page.locator("#err-ips")).to_contain_text("the ring backend connects the Macs by IP")
    expect(page.locator("#host-name")).to_have_value("studio")
    expect(page.locator("#host-ips")).to_have_attribute("aria-invalid", "true")
    page.fill("#host-ips", "192.168.1.20")
    page.get_by_role("button", name="Add host").click()
    expect(page.locator('tr[data-host="studio"]')).to_contain_text("192.168.1.20")
    expect(page.locator("#err-ips")).to_have_count(0)
    saved = server.get("/api/settings/hosts")
    assert [h["name"] for h in saved["hosts"]] == ["here", "studio"]
    shot(page, "31-system-hosts")
    page.get_by_role("button", name="Remove here").click()
    expect(page.locator('tr[data-host="here"]')).to_have_count(0)
    expect(page.locator('tr[data-host="studio"]')).to_be_visible()
    assert [h["name"] for h in server.get("/api/settings/hosts")["hosts"]] == ["studio"]
    watch.check()
    context.close()
