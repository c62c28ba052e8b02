"""`prospect doctor` on this machine: the real probes (child processes importing torch and
mlx) through the CLI, the API and the System page; the server itself imports neither."""

from __future__ import annotations

import json
import subprocess
import sys

from fastapi.testclient import TestClient

from app.config import Settings
from app.system.doctor import OK, PROBLEM, WARNING
from tests.helpers import ROOT


def test_prospect_doctor_json_on_this_machine(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PROSPECT_HOME": str(tmp_path / "h")}
    out = subprocess.run([sys.executable, "-m", "app.cli", "doctor", "--json"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout)
    checks = {c["name"]: c for c in result["checks"]}
    assert out.returncode == (1 if result["status"] == PROBLEM else 0), out.stderr
    import importlib.metadata as md

    assert f"{md.version('torch').split('+')[0]} on cpu" in checks["torch"]["detail"]
    assert checks["MLX"]["status"] == OK and "on cpu" in checks["MLX"]["detail"]
    assert checks["Hub"]["status"] == OK and "offline" in checks["Hub"]["detail"]
    assert all(c["status"] in (OK, WARNING, PROBLEM) for c in result["checks"])
    assert all(c["action"] for c in result["checks"] if c["status"] == PROBLEM)
    text = subprocess.run([sys.executable, "-m", "app.cli", "doctor"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300).stdout
    assert text.splitlines()[0].split()[:2] == ["ok", "Python"]
    assert "ok, " in text.splitlines()[-1]


def test_api_and_system_page_run_the_doctor_without_importing_a_backend(tmp_path):
    """In a fresh interpreter: the endpoint and the Health panel answer, torch stays out."""
    code = f"""
import json, sys
from fastapi.testclient import TestClient
from app.config import Settings
from app.main import create_app
app = create_app(Settings(home={str(tmp_path)!r}))
with TestClient(app, base_url="http://127.0.0.1") as c:
    api = c.get("/api/system/doctor")
    page = c.get("/system")
    panel = c.get("/fragments/system/doctor")
print(json.dumps({{"api": api.status_code, "body": api.json(), "page": page.text,
                  "panel": panel.text,
                  "heavy": [m for m in ("torch", "mlx", "transformers") if m in sys.modules]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["api"] == 200 and got["heavy"] == []
    names = [c["name"] for c in got["body"]["checks"]]
    assert names[:5] == ["Python", "Versions", "torch", "bf16", "MLX"]
    assert 'hx-get="/fragments/system/doctor"' in got["page"]
    assert 'data-check="torch"' in got["panel"] and "health-summary" in got["panel"]


def test_the_doctor_endpoint_is_cached(tmp_path, monkeypatch):
    """Two requests within the minute: one run of the checks (each spawns two imports)."""
    from app.main import create_app
    from app.system import doctor_cache
    calls = []
    monkeypatch.setattr(doctor_cache, "doctor", lambda settings: calls.append(settings.home_dir)
                        or {"status": OK, "counts": {OK: 0, WARNING: 0, PROBLEM: 0},
                            "checks": []})
    with TestClient(create_app(Settings(home=tmp_path)), base_url="http://127.0.0.1") as c:
        first = c.get("/api/system/doctor").json()
        second = c.get("/api/system/doctor").json()
    assert calls == [tmp_path.resolve()] and first == second
