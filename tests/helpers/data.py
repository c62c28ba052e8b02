"""Homes and datasets the tests build by hand: a model folder and a dataset file, an app over a
home with one finished job (workers never start), dataset bytes in every format."""

from __future__ import annotations

import atexit
import functools
import io
import json
import shutil
import tempfile
from pathlib import Path

ROWS = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0} for i in range(8)]


@functools.cache
def _migrated_db() -> Path:
    from app.db import make_engine, migrate

    folder = Path(tempfile.mkdtemp(prefix="prospect-migrated-"))
    atexit.register(shutil.rmtree, folder, True)
    engine = make_engine(folder / "prospect.db")
    migrate(engine)
    engine.dispose()  # the last connection checkpoints the WAL: one file holds it all
    return folder / "prospect.db"


def seed_db(db_path: Path) -> Path:
    """Put a database already at Alembic's head at `db_path` (a home's prospect.db): migrate()
    then finds nothing to do, 0.05 s instead of ~0.3 s of creating every table, per test."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_db(), db_path)
    return db_path


def write_assets(home: Path) -> tuple[Path, Path]:
    model = home / "models" / "m"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    data = home / "datasets" / "d.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return model, data


def home_with_a_finished_job(home: Path, python: str = "/bin/false"):
    """An app over ``home`` with model ``m``, dataset ``d`` and one succeeded job holding an
    adapter folder; workers never start (``python``). Returns (app, model, data, adapter)."""
    from sqlmodel import Session  # here: the dataset helpers above need no app

    from app.config import Settings
    from app.db import migrate
    from app.main import create_app
    from app.models import DatasetEntry, Job, JobStatus, ModelEntry

    seed_db(home / "prospect.db")
    app = create_app(Settings(home=home, python=python))
    migrate(app.state.engine)
    model, data = write_assets(home)
    adapter = home / "runs" / "000001" / "adapter"
    adapter.mkdir(parents=True)
    with Session(app.state.engine) as s:
        s.add(ModelEntry(id="m", path=str(model), source="test"))
        s.add(DatasetEntry(id="d", path=str(data), rows=8))
        s.add(Job(backend="torch", method="kto", model="m", dataset="d", name="done",
                  status=JobStatus.succeeded, run_dir=str(adapter.parent),
                  adapter_path=str(adapter), model_path=str(model), dataset_path=str(data)))
        s.commit()
    return app, model, data, adapter


def form(**extra) -> dict:
    return {"method": "torch/kto", "model_choice": "m", "dataset_choice": "d",
            "params.max_steps": "1", **extra}


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet(rows) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


def csv_bytes(rows) -> bytes:
    import csv

    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return out.getvalue().encode()
