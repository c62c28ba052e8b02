"""What was stored with a lone surrogate before the checks still reads through the real server
and `prospect jobs`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlmodel import Session

from app.config import Settings
from app.db import migrate
from app.main import create_app
from app.models import Job, JobStatus
from tests.helpers import ROOT
from tests.helpers.server import make_server, server_env

S = "\ud800"  # a lone surrogate: json.dumps writes it as the escape \ud800


@pytest.mark.timeout(120)
def test_prospect_jobs_lists_a_job_stored_with_a_lone_surrogate(tmp_path):
    home = tmp_path / "home"
    settings = Settings(home=home)
    app = create_app(settings)
    migrate(app.state.engine)
    with Session(app.state.engine) as s:
        s.add(Job(backend="torch", method="kto", model="m", dataset="d", name="bad",
                  status=JobStatus.failed, params={"target_modules": [S]}))
        s.commit()
    app.state.engine.dispose()
    server = make_server(home)
    server.start()
    try:
        out = subprocess.run([sys.executable, "-m", "app.cli", "jobs"], cwd=ROOT,
                             env=server_env(home, PROSPECT_PORT=str(server.port)),
                             capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    assert "bad" in out.stdout
