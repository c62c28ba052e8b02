"""The doctor's report kept for a minute: it imports torch and mlx in child processes
(seconds), so GET /api/system/doctor and the System page's Health panel share one run at a
time and its answer."""

from __future__ import annotations

import threading
import time
from typing import Any

from app.config import Settings
from app.system.doctor import doctor

DOCTOR_TTL_S = 60.0
_doctor_lock = threading.Lock()
_doctor_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def cached_doctor(settings: Settings) -> dict[str, Any]:
    """The doctor's report, at most DOCTOR_TTL_S old; concurrent callers share one run."""
    key = str(settings.home_dir)
    with _doctor_lock:
        hit = _doctor_cache.get(key)
        if hit is None or time.monotonic() - hit[0] > DOCTOR_TTL_S:
            hit = (time.monotonic(), {**doctor(settings), "checked_at": time.time()})
            _doctor_cache[key] = hit
        return hit[1]
