"""The MLX worker's config file: the torch worker's keys and checks, against MLX_SFT / MLX_KTO /
MLX_FUSE; a resumable MLX checkpoint holds state.json (step and optimizer state)."""

from __future__ import annotations

from typing import Any

from workers.torch.config import KEYS, ConfigError, JobConfig, read_config_file
from workers.torch.config import parse_config as _parse_config


def parse_config(raw: dict[str, Any]) -> JobConfig:
    """Check every key; raise ConfigError (or ParamError for a knob) naming the first fault."""
    return _parse_config(raw, backend="mlx",
                         is_checkpoint=lambda path: (path / "state.json").is_file())


__all__ = ["KEYS", "ConfigError", "JobConfig", "parse_config", "read_config_file"]
