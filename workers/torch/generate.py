"""An arena's answers on torch: workers/generate.py's loop over the torch serving backend
(workers/torch/serve.py: transformers, PEFT adapters switched per answer). Memory events
report the device's allocator once a model is loaded."""

from __future__ import annotations

from contract.job_config import JobConfig
from contract.method_args import GenerateArgs
from workers import generate
from workers.runtime import RunResult, Session
from workers.torch.serve import TorchBackend


def run(job: JobConfig[GenerateArgs], session: Session) -> RunResult:
    session.keep_awake()

    def loaded(backend: TorchBackend) -> None:
        session.sampler.backend_probe = backend.probe  # torch_probe(device); None on the CPU

    return generate.run(job, session, TorchBackend, loaded)
