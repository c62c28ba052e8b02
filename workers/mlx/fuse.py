"""Fuse an MLX adapter into its base model: a standalone model folder, as ``mlx_lm fuse`` makes.

``python -m workers.mlx.fuse --model M --adapter-path A --save-path S [--run-dir R]``

With ``--run-dir`` it reports like a job (status, artifact ``fused_model``, error with a hint,
done) in ``R/events.jsonl``. The fused folder loads with ``mlx_lm.load(S)`` and can be the base
model of a new job. Each LoRA layer becomes a plain linear layer holding W + scale·(A·B)ᵀ.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from contract.events import EVENTS_FILE, EventWriter
from contract.job_config import JobConfig
from contract.method_args import FuseArgs
from workers.runtime import RunResult


def fuse(model: str, adapter_path: Path | str, save_path: Path | str,
         dequantize: bool = False) -> Path:
    """Write the fused model to ``save_path``; return it."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, save

    from workers.mlx.common import ADAPTER_CONFIG, ADAPTER_FILE, load_model

    adapter_path = Path(adapter_path)
    for name in (ADAPTER_FILE, ADAPTER_CONFIG):
        if not (adapter_path / name).is_file():
            raise FileNotFoundError(f"no {name} in {adapter_path}: give an MLX adapter folder")
    # The same checks and "not found" errors as a training job.
    base, tokenizer, config = load_model(model, adapter_path=str(adapter_path),
                                         return_config=True)
    fused = [(n, m.fuse(dequantize=dequantize)) for n, m in base.named_modules()
             if hasattr(m, "fuse")]
    if fused:
        base.update_modules(tree_unflatten(fused))
    if dequantize:
        base = dequantize_model(base)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    save_path = Path(save_path)
    save(save_path, model, base, tokenizer, config, donate_model=False)
    return save_path


def run(job: JobConfig[FuseArgs], events: EventWriter) -> RunResult:
    """A fuse job (method ``fuse``) as the MLX worker runs it: the adapter of
    ``job.args.adapter_path`` fused into ``job.model``, saved to ``<run_dir>/fused``."""
    adapter, save_path = job.args.adapter_path, job.run_dir / "fused"
    events.emit("status", phase="fusing", message=f"fusing {adapter} into {job.model}")
    events.emit("progress", step=0, total_steps=1)
    fuse(job.model, adapter, save_path)
    events.emit("progress", step=1, total_steps=1, eta_s=0)
    events.emit("artifact", kind="fused_model", path=str(save_path))
    return RunResult("succeeded", {"steps": 1, "total_steps": 1,
                                   "fused_model_path": str(save_path)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.mlx.fuse", description=__doc__)
    parser.add_argument("--model", required=True, help="base model: folder or cached hub id")
    parser.add_argument("--adapter-path", type=Path, required=True, help="the adapter folder")
    parser.add_argument("--save-path", type=Path, required=True, help="where the model goes")
    parser.add_argument("--dequantize", action="store_true", help="save unquantized weights")
    parser.add_argument("--run-dir", type=Path, help="write job events to RUN_DIR/events.jsonl")
    cli = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from workers.mlx.errors import describe_error

    events = None
    if cli.run_dir is not None:
        cli.run_dir.mkdir(parents=True, exist_ok=True)
        events = EventWriter(cli.run_dir / EVENTS_FILE)
        events.emit("status", phase="fusing",
                    message=f"fusing {cli.adapter_path} into {cli.model}")
    try:
        path = fuse(cli.model, cli.adapter_path, cli.save_path, cli.dequantize)
    except Exception as exc:
        traceback.print_exc()
        if events is not None:
            events.emit("error", **describe_error(exc))
            events.emit("done", status="failed", summary={})
            events.close()
        return 1
    print(f"fused model saved to {path}", flush=True)
    if events is not None:
        events.emit("artifact", kind="fused_model", path=str(path.resolve()))
        events.emit("done", status="succeeded", summary={"fused_model_path": str(path)})
        events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
