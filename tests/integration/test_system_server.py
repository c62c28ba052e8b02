"""GET /api/system and the system panel fragment through the real server."""

from __future__ import annotations

import psutil


def test_api_system_and_panel_fragment_on_a_real_server(tmp_path):
    import urllib.request

    from tests.helpers.server import make_server

    server = make_server(tmp_path)
    server.start()
    try:
        info = server.get("/api/system")
        assert info["memory_total_bytes"] == psutil.virtual_memory().total
        assert set(info["backends"]) == {"cpu", "cuda", "mps", "mlx"}
        assert "torch" in info["versions"]
        with urllib.request.urlopen(server.url + "/fragments/system", timeout=10) as resp:
            html = resp.read().decode()
        assert 'data-testid="sys-memory"' in html and "used" in html
        assert "Backends" in html and "cpu" in html
    finally:
        server.stop()
