"""Merge a PEFT LoRA adapter into its base model: the torch worker's method ``fuse``.

    load the base model and the adapter → ``merge_and_unload()`` → save_pretrained of the
    merged model and the tokenizer to ``<run_dir>/fused`` → artifact ``fused_model``.

Done on the CPU in the weights' own dtype: a merge is one pass over the weights, and the CPU
has the room (a GPU or MPS may not, next to a training job).
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import FuseArgs
from workers.model_source import model_source
from workers.runtime import RunResult, loading_model


def run(job: JobConfig[FuseArgs], events: EventWriter) -> RunResult:
    adapter, save_path = Path(job.args.adapter_path), job.run_dir / "fused"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter_config.json in {adapter}: give a PEFT adapter folder")
    events.emit("status", phase="loading_model", message=f"loading {job.model} and {adapter}")
    events.emit("progress", step=0, total_steps=2)
    tokenizer, base = load_base(job.model)
    model = PeftModel.from_pretrained(base, str(adapter))
    events.emit("status", phase="fusing", message="merging the adapter into the weights")
    merged = model.merge_and_unload()
    events.emit("progress", step=1, total_steps=2)
    events.emit("status", phase="saving", message=f"saving the merged model to {save_path}")
    merged.save_pretrained(save_path)
    tokenizer.save_pretrained(save_path)
    events.emit("progress", step=2, total_steps=2, eta_s=0)
    events.emit("artifact", kind="fused_model", path=str(save_path))
    return RunResult("succeeded", {"steps": 2, "total_steps": 2,
                                   "fused_model_path": str(save_path)})


def load_base(model_id: str):
    """Tokenizer and model (in its saved dtype) from a local folder or the hub cache."""
    source = model_source(model_id)  # an absolute folder: never relative to the cwd
    with loading_model(source, says=f"{model_id!r} is neither a loadable local folder nor a "
                       "hub id in the local Hugging Face cache (Prospect runs offline)"):
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    return tokenizer, model
