"""The MLX worker's config file: the torch worker's keys, checked against MLX_SFT / MLX_KTO /
MLX_FUSE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.params import METHODS
from workers.torch.config import KEYS, ConfigError, JobConfig, read_config_file


def parse_config(raw: dict[str, Any]) -> JobConfig:
    """Check every key; raise ConfigError (or ParamError for a knob) naming the first fault."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown config key; known keys: {', '.join(KEYS)}")
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise ConfigError(missing[0], "missing from the config file")
    if raw["backend"] != "mlx" or raw["method"] not in ("sft", "kto", "fuse"):
        raise ConfigError("method", "this worker runs mlx/sft, mlx/kto and mlx/fuse, not "
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
    params = METHODS[("mlx", raw["method"])].validate(raw["params"])  # ParamError names the knob
    resume = raw["resume_from_checkpoint"]
    if resume is not None:
        if not isinstance(resume, str) or not (Path(resume) / "state.json").is_file():
            raise ConfigError("resume_from_checkpoint", f"{resume!r} is not a checkpoint folder")
        resume = Path(resume)
    return JobConfig(
        job_id=job_id,
        model=raw["model"].strip(),
        dataset=Path(raw["dataset"]),
        run_dir=Path(raw["run_dir"]),
        params=params,
        resume_from_checkpoint=resume,
        backend="mlx",
        method=raw["method"],
    )


__all__ = ["KEYS", "ConfigError", "JobConfig", "parse_config", "read_config_file"]
