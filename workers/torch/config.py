"""The worker's config file: exactly the keys the server writes, checked before torch loads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.knobs import METHODS, ParamError

KEYS = (
    "job_id",
    "backend",
    "method",
    "model",
    "dataset",
    "run_dir",
    "params",
    "resume_from_checkpoint",
)


class ConfigError(ValueError):
    """The config file is unreadable or has a wrong, missing or unknown key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class JobConfig:
    job_id: int
    model: str
    dataset: Path
    run_dir: Path
    params: dict[str, Any]  # every knob of TORCH_KTO (or TORCH_FUSE), validated and filled
    resume_from_checkpoint: Path | None = None
    backend: str = "torch"
    method: str = "kto"

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", f"no config file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("config", f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config", "must be a JSON object")
    return raw


def parse_config(raw: dict[str, Any], backend: str = "torch",
                 is_checkpoint: Callable[[Path], bool] = Path.is_dir) -> JobConfig:
    """Check every key; raise ConfigError (or ParamError for a knob) naming the first fault.
    Shared by both workers: ``backend`` picks the methods, ``is_checkpoint`` what a resumable
    checkpoint folder holds."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown config key; known keys: {', '.join(KEYS)}")
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise ConfigError(missing[0], "missing from the config file")
    methods = sorted(m for b, m in METHODS if b == backend)
    if raw["backend"] != backend or raw["method"] not in methods:
        runs = ", ".join(f"{backend}/{m}" for m in methods)
        raise ConfigError("method", f"this worker runs {runs}, not "
                          f"{raw['backend']}/{raw['method']}")
    job_id = raw["job_id"]
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise ConfigError("job_id", f"must be an integer, got {job_id!r}")
    paths = ("run_dir",) if raw["method"] == "fuse" else ("dataset", "run_dir")  # no data
    for key in ("model", *paths):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise ConfigError(key, "must be a non-empty string")
    for key in paths:
        if not Path(raw[key]).is_absolute():
            raise ConfigError(key, f"must be an absolute path, got {raw[key]!r}")
    if not isinstance(raw["params"], dict):
        raise ConfigError("params", "must be a JSON object of knob names to values")
    params = METHODS[(backend, raw["method"])].validate(raw["params"])  # ParamError: the knob
    resume = raw["resume_from_checkpoint"]
    if resume is not None:
        if not isinstance(resume, str) or not is_checkpoint(Path(resume)):
            raise ConfigError("resume_from_checkpoint", f"{resume!r} is not a checkpoint folder")
        resume = Path(resume)
    return JobConfig(
        job_id=job_id,
        model=raw["model"].strip(),
        dataset=Path(raw["dataset"]),
        run_dir=Path(raw["run_dir"]),
        params=params,
        resume_from_checkpoint=resume,
        backend=backend,
        method=raw["method"],
    )


__all__ = ["KEYS", "ConfigError", "JobConfig", "ParamError", "parse_config", "read_config_file"]
