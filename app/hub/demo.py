"""The offline demo: a tiny model and a KTO dataset, built once by `prospect init`.

Building needs tokenizers/numpy/safetensors, so it runs in a child process (workers/
demo_assets.py): the server process stays free of ML libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.config import Settings
from app.db import ROOT
from app.models import DatasetEntry, ModelEntry

DEMO_MODEL = "tiny-demo"
DEMO_DATASET = "demo-kto"


def build_demo(settings: Settings) -> dict[str, str]:
    cmd = [settings.python or sys.executable, "-m", "workers.tools.demo_assets",
           "--models-dir", str(settings.models_dir), "--datasets-dir", str(settings.datasets_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the demo assets failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def register_demo(engine: Engine, paths: dict[str, str]) -> None:
    with Session(engine) as session:
        model = session.get(ModelEntry, DEMO_MODEL) or ModelEntry(id=DEMO_MODEL, path="")
        model.path, model.source = paths["model"], "demo"
        dataset = session.get(DatasetEntry, DEMO_DATASET) or DatasetEntry(id=DEMO_DATASET,
                                                                           path="")
        dataset.path, dataset.format, dataset.kind = paths["dataset"], "kto", "kto"
        dataset.source, dataset.name = "demo", DEMO_DATASET
        dataset.size_bytes = os.path.getsize(paths["dataset"])
        with open(paths["dataset"], encoding="utf-8") as f:
            dataset.rows = sum(1 for line in f if line.strip())
        session.add(model)
        session.add(dataset)
        session.commit()
