"""Settings: one pydantic-settings object, read from PROSPECT_* environment variables."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROSPECT_", extra="ignore")

    home: Path = Field(default=Path("~/.prospect"), description="Holds prospect.db, runs/, "
                       "datasets/ and models/.")
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535)
    api_token: str | None = Field(default=None, description="Bearer token; required when "
                                  "host is not a loopback address.")
    allowed_hosts: list[str] = Field(default_factory=list, description="Extra Host header "
                                     "names to accept besides the loopback names.")
    upload_limit_mb: int = Field(default=2048, ge=1)
    body_limit_kib: int = Field(default=1024, ge=1, description="Largest request body "
                                "other than a dataset upload, in KiB; more is a 413.")
    export_cache_entries: int = Field(default=8, ge=1, description="MLX exports kept on "
                                      "disk (datasets/<id>/mlx-*), all datasets together; "
                                      "the least recently used is removed first.")
    token_cache_entries: int = Field(default=32, ge=1, description="Token length tables "
                                     "kept on disk (datasets/<id>/tokens-*.json), all "
                                     "datasets together; least recently used removed first.")
    max_concurrent_jobs: int = Field(default=1, ge=1)
    cancel_grace_s: float = Field(default=60.0, gt=0, description="Seconds a worker has to "
                                  "save after SIGTERM before it is killed.")
    hang_timeout_s: float = Field(default=900.0, gt=0, description="A running worker that "
                                  "writes no event for this long (they report memory every "
                                  "2 s) is taken as hung and stopped.")
    stall_timeout_s: float = Field(default=3600.0, gt=0, description="A training worker "
                                   "that finishes no step for this long, while still alive, "
                                   "is taken as hung and stopped.")
    poll_interval_s: float = Field(default=0.25, gt=0, description="How often the supervisor "
                                   "reads new events.")
    allow_downloads: bool = Field(default=False, description="Let workers download a hub "
                                  "model that is not in the local cache (off: fully offline).")
    tune_min_probe_s: float = Field(default=10.0, ge=0, description="tune: auto times a "
                                    "few steps of each candidate within 5% of the job's "
                                    "expected time; when that budget is below this many "
                                    "seconds, the memory plan's fastest setting is taken "
                                    "untimed (0: always time).")
    inference_idle_s: float = Field(default=600.0, gt=0, description="A loaded model "
                                    "(an inference worker) idle this long is unloaded.")
    memory_budget_gb: float | None = Field(default=None, gt=0, description="The most memory "
                                           "Prospect plans with, in GiB: jobs and loaded "
                                           "models together (default: what is free).")
    inference_worker_cmd: str | None = Field(default=None, description="Command that runs "
                                             "an inference worker in place of the "
                                             "interpreter (tests use a fake); `-m workers."
                                             "<backend>.serve --model PATH` is appended.")
    python: str | None = Field(default=None, description="Interpreter that runs workers "
                               "(default: the server's).")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def db_path(self) -> Path:
        return self.home_dir / "prospect.db"

    @property
    def runs_dir(self) -> Path:
        return self.home_dir / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.home_dir / "datasets"

    @property
    def models_dir(self) -> Path:
        return self.home_dir / "models"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def ensure_dirs(self) -> None:
        for d in (self.home_dir, self.runs_dir, self.datasets_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
