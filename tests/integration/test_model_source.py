"""Where a worker reads its model from (workers/model_source.py): a hub id only ever through
the Hugging Face cache, never as a folder relative to the worker's working directory (what
is a hub id at all: tests/unit/test_hub_ids.py).

The loaders run in a subprocess with their own HF_HUB_CACHE and HF_HUB_OFFLINE=1 (as a worker
does): huggingface_hub reads both when it is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.hf_cache import add_repo

LOAD = """
import json, sys
from workers.runtime import ModelNotFound
from workers.torch.kto import load_model
from workers.torch.device import DeviceChoice
out = []
for name in sys.argv[1:]:
    try:
        tokenizer, model = load_model(name, DeviceChoice(device="cpu", dtype="float32"))
        out.append({"loaded": model.name_or_path})
    except ModelNotFound as exc:
        out.append({"not_found": str(exc)})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def demo_model(demo) -> Path:
    return demo["model"]


def load_in(cwd: Path, models: list[str], cache: Path) -> list[dict]:
    """The torch worker's load_model on each model, run as a worker runs: offline, in
    ``cwd`` (one process: importing torch is the slow part)."""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", LOAD, *models], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_worker_never_loads_a_hub_id_as_a_folder_under_its_cwd(tmp_path, demo_model):
    """Before: `tests/..` (and any org/name that exists under the cwd) loaded that folder."""
    cwd = tmp_path / "cwd"
    shutil.copytree(demo_model, cwd)  # a loadable model right in the working directory...
    (cwd / "tests").mkdir()  # ...so `tests/..` names it
    shutil.copytree(demo_model, cwd / "acme" / "tiny")  # and `acme/tiny` is a folder there
    cache = tmp_path / "hub"
    cache.mkdir()
    dots, plain = load_in(cwd, ["tests/..", "acme/tiny"], cache)
    assert "not_found" in dots and "'..'" in dots["not_found"], dots
    assert "hf download acme/tiny" in plain["not_found"], plain


@pytest.mark.slow
def test_worker_loads_a_cached_hub_id_from_its_snapshot(tmp_path, demo_model):
    cache = tmp_path / "hub"
    snapshot = add_repo(cache, "acme/tiny", demo_model)
    hub, folder = load_in(tmp_path, ["acme/tiny", str(demo_model)], cache)
    assert Path(hub["loaded"]).resolve() == snapshot.resolve()
    assert Path(folder["loaded"]) == demo_model  # an absolute folder loads as itself
