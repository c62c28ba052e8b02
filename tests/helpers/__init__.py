"""What the test modules share (no test module imports another): servers (server.py), the
browser (browser.py), workers real and fake (workers.py), homes and datasets (data.py), runs
written straight into a database (runs.py), a Hugging Face cache on disk (hf_cache.py) and the
pages' form helpers (pages.py). Fixtures stay in conftest.py."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
