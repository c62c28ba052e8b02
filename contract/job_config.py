"""The worker's config file, ``<run_dir>/config.json``: one writer (the supervisor calls
``write_config``) and one reader (the workers call ``read_config_file`` then ``parse_config``).

The file holds exactly ``KEYS``; the reader refuses an unknown, missing or wrong key before
anything heavy loads, naming it. The bytes written are those of every earlier version (the same
keys in the same order, ``json.dumps(..., indent=2)``), so old run folders resume unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from contract.events import CONFIG_FILE
from contract.knobs import METHODS, ParamError
from contract.method_args import MethodArgs, args_class

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

A = TypeVar("A", bound=MethodArgs)

NO_DATASET = frozenset({"fuse", "convert", "download"})  # methods that read no dataset


class ConfigError(ValueError):
    """The config file is unreadable or has a wrong, missing or unknown key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class JobConfig(Generic[A]):
    """One job as its worker reads it; ``args`` are the method's knobs, typed and validated
    (``JobConfig[TorchKTOArgs]`` in a signature says which)."""

    job_id: int
    model: str
    dataset: Path
    run_dir: Path
    args: A
    resume_from_checkpoint: Path | None = None
    backend: str = "torch"
    method: str = "kto"

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"


def write_config(run_dir: Path, *, job_id: int, backend: str, method: str, model: str,
                 dataset: str, params: dict[str, Any],
                 resume_from_checkpoint: str | None) -> Path:
    """Write ``<run_dir>/config.json`` for a worker; return its path. OSError when the folder
    cannot be written."""
    config = dict(zip(KEYS, (job_id, backend, method, model, dataset, str(run_dir), params,
                             resume_from_checkpoint), strict=True))
    path = Path(run_dir) / CONFIG_FILE
    path.write_text(json.dumps(config, indent=2))
    return path


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's JSON object, unchecked (``parse_config`` checks it); ConfigError when it
    cannot be read or is not an object."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", f"no config file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("config", f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config", "must be a JSON object")
    return raw


def parse_config(raw: dict[str, Any], backend: str,
                 is_checkpoint: Callable[[Path], bool] = Path.is_dir) -> JobConfig[Any]:
    """Check every key; raise ConfigError (or ParamError for a knob) naming the first fault.
    ``backend`` is the worker's (it runs only its own methods); ``is_checkpoint`` tells what a
    resumable checkpoint folder of that backend holds."""
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
    no_data = raw["method"] in NO_DATASET  # the adapter, or the model alone, is the input
    paths = ("run_dir",) if no_data else ("dataset", "run_dir")
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
        args=args_class(backend, raw["method"])(**params),
        resume_from_checkpoint=resume,
        backend=backend,
        method=raw["method"],
    )


__all__ = ["CONFIG_FILE", "KEYS", "ConfigError", "JobConfig", "ParamError", "parse_config",
           "read_config_file", "write_config"]
