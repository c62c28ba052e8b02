"""The server process stays light: it never imports an ML library (DESIGN.md, "Shape")."""

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

HEAVY = ("torch", "mlx", "trl", "transformers", "peft", "datasets", "tokenizers",
         "safetensors", "numpy")


def test_importing_and_building_the_app_loads_no_ml_library(tmp_path):
    code = ("import sys; from app.config import Settings; from app.main import create_app; "
            "import app.cli; create_app(Settings(home=sys.argv[1])); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_running_server_maps_no_ml_library(live_server):
    """Checked on the live process, after it has run jobs: no libtorch or mlx in its maps."""
    maps = Path(f"/proc/{live_server.proc.pid}/maps").read_text()
    for lib in ("libtorch", "libmlx", "/torch/", "/mlx/", "/transformers/"):
        assert lib not in maps, lib
