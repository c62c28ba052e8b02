"""An arena's answers on MLX: workers/generate.py's loop over the MLX serving backend
(workers/mlx/serve.py: mlx-lm, adapters' LoRA layers swapped in per answer). Memory events
report MLX's allocator once a model is loaded."""

from __future__ import annotations

from contract.job_config import JobConfig
from contract.method_args import GenerateArgs
from workers import generate
from workers.memory import mlx_probe
from workers.mlx.serve import MLXBackend
from workers.runtime import RunResult, Session


def run(job: JobConfig[GenerateArgs], session: Session) -> RunResult:
    def loaded(backend: MLXBackend) -> None:
        session.sampler.backend_probe = mlx_probe

    return generate.run(job, session, MLXBackend, loaded)
