"""The API tier's app: a migrated home with the demo model and dataset registered (files on
disk, no worker ever starts: TestClient without the lifespan runs no supervisor)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.config import Settings
from app.db import migrate
from app.main import create_app
from app.models import DatasetEntry, ModelEntry
from tests.helpers.data import seed_db


@pytest.fixture()
def app(tmp_path):
    seed_db(tmp_path / "prospect.db")
    app = create_app(Settings(home=tmp_path))
    migrate(app.state.engine)
    model = tmp_path / "models" / "tiny-demo"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    data = tmp_path / "datasets" / "demo-kto.jsonl"
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0} for i in range(8)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with Session(app.state.engine) as s:
        s.add(ModelEntry(id="tiny-demo", path=str(model), source="demo"))
        s.add(DatasetEntry(id="demo-kto", path=str(data), rows=8))
        s.commit()
    return app


@pytest.fixture()
def client(app):
    # The pages' htmx requests carry the CSRF token as a header (templates/base.html).
    return TestClient(app, base_url="http://127.0.0.1",
                      headers={"X-CSRF-Token": app.state.csrf_token})
