"""The bare-library baseline: the same KTO job as Prospect's torch worker, as a plain TRL script.

Prints one JSON line of TRL's own train metrics. Used by bench/overhead.py; runnable alone:
    python bench/bare_trl.py --model DIR --dataset FILE --params '{"max_steps": 100}'
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--params", default="{}", help="knobs as JSON, as a job's params")
    args = ap.parse_args()
    t0 = time.perf_counter()

    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from contract.knobs import TORCH_KTO
    from contract.rows import load_kto_dataset  # the same rows the worker trains on

    p = TORCH_KTO.validate(json.loads(args.params))
    cuda = torch.cuda.is_available() and p["device"] in ("auto", "cuda")
    bf16 = cuda and torch.cuda.is_bf16_supported() and p["dtype"] in ("auto", "bfloat16")
    dtype = torch.bfloat16 if bf16 else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    ckpt = "activation" if hasattr(KTOConfig, "activation_checkpointing") or \
        "activation_checkpointing" in KTOConfig.__dataclass_fields__ else "gradient"
    with tempfile.TemporaryDirectory() as out:
        config = KTOConfig(
            output_dir=out, per_device_train_batch_size=p["per_device_train_batch_size"],
            gradient_accumulation_steps=p["gradient_accumulation_steps"],
            learning_rate=p["learning_rate"], num_train_epochs=p["num_train_epochs"],
            max_steps=p["max_steps"], max_length=p["max_length"], beta=p["beta"],
            desirable_weight=p["desirable_weight"], undesirable_weight=p["undesirable_weight"],
            precompute_ref_log_probs=p["precompute_ref_log_probs"],
            **{f"{ckpt}_checkpointing": p["gradient_checkpointing"],
               f"{ckpt}_checkpointing_kwargs": {"use_reentrant": False}},
            warmup_steps=min(p["warmup_ratio"], 0.9999), seed=p["seed"],
            logging_steps=p["logging_steps"], save_strategy="steps", save_steps=p["save_steps"],
            save_total_limit=p["save_total_limit"], bf16=bf16, use_cpu=not cuda,
            report_to=[], disable_tqdm=True,
        )
        target = "all-linear" if "all-linear" in p["target_modules"] else p["target_modules"]
        trainer = KTOTrainer(
            model=model, args=config, processing_class=tokenizer,
            train_dataset=datasets.Dataset.from_list(load_kto_dataset(args.dataset)),
            peft_config=LoraConfig(r=p["r"], lora_alpha=p["lora_alpha"],
                                   lora_dropout=p["lora_dropout"], target_modules=target,
                                   task_type="CAUSAL_LM"),
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        m = trainer.train().metrics
        trainer.model.save_pretrained(Path(out) / "adapter")
    m["wall_s"] = time.perf_counter() - t0
    m["steps"] = trainer.state.global_step
    if cuda:
        m["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch: rank 0 reports
        print(json.dumps(m))


if __name__ == "__main__":
    main()
