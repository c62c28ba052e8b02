"""Per-step work of the libraries under the torch worker that is not training, cut once.

accelerate (1.15) answers ``is_peft_available()`` and its other ``is_*_available()`` checks by
finding the package and parsing its METADATA file on every call, and TRL's KTOTrainer asks
``is_peft_model(model)`` in every step's loss (HF Trainer asks ``is_deepspeed_available()`` and
``is_lomo_available()`` every step too): 0.75 ms a step on this machine's CPU, about 3 % of
the tiny demo model's step (bench/peer_kto.py). Which packages are installed does not change
while a job runs, so the worker keeps the answers for its life: the same answers, read once.
"""

from __future__ import annotations

import functools


def cache_package_checks() -> None:
    """Cache accelerate's package-availability answers in this process (idempotent)."""
    from accelerate.utils import imports

    check = imports._is_package_available
    if not hasattr(check, "cache_info"):  # not yet cached
        imports._is_package_available = functools.cache(check)
