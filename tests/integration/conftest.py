"""Worker runs that several integration tests read: each real worker start costs ~10 s of
CPU (torch, TRL) or ~5 s (MLX) on a 2-core machine, so a run is made once per session and a
test that changes a run (damages a checkpoint, resumes into it) works on a copy."""

from __future__ import annotations

import pytest

from tests.helpers.workers import (
    KTO_FAST,
    run_mlx,
    run_torch,
    write_mlx_config,
    write_torch_config,
)


@pytest.fixture(scope="session")
def torch_run(demo, tmp_path_factory):
    """The torch KTO worker on FAST (6 steps, a checkpoint every 3): (run_dir, rc, events)."""
    run_dir = tmp_path_factory.mktemp("torch-run")
    write_torch_config(run_dir, demo)
    return (run_dir, *run_torch(run_dir))


@pytest.fixture(scope="session")
def mlx_kto_run(demo, tmp_path_factory):
    """The MLX KTO worker on KTO_FAST (8 steps, a checkpoint every 4): (run_dir, rc, events)."""
    pytest.importorskip("mlx_lm")
    run_dir = tmp_path_factory.mktemp("mlx-kto-run")
    write_mlx_config(run_dir, demo, "kto", KTO_FAST)
    return (run_dir, *run_mlx(run_dir))
