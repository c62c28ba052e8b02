"""The memory of an inference worker holding a model (the playground and /v1, and a generate
job's): pure, like app/planner/estimate.py, whose sizes it uses."""

from __future__ import annotations

from typing import Any

from app.planner.estimate import (
    CUDA_CONTEXT,
    DTYPE_BYTES,
    FITS,
    NO_FIT,
    OVERHEAD,
    _dtype_note,
    budget_for,
    target_device,
    torch_dtype,
    verdict,
    weights_bytes,
)
from app.units import fmt_bytes, fmt_count

INFERENCE_CONTEXT_PLAN = 4096  # tokens of KV cache planned for (a chat turn, not 128 k)


def inference_estimate(m: dict[str, Any], backend: str, device: str = "cpu",
                       context_tokens: int = INFERENCE_CONTEXT_PLAN) -> dict[str, Any]:
    """Memory of an inference worker holding the model: weights in the worker's dtype (torch
    as training picks it: bf16 on CUDA, fp32 elsewhere; MLX as stored), the KV cache of one
    sequence of ``context_tokens`` and the runtime. Adapters are LoRA-sized: not counted."""
    dtype = torch_dtype("auto", device) if backend == "torch" else \
        (m.get("dtype") if m.get("dtype") in DTYPE_BYTES else "bfloat16")
    act = DTYPE_BYTES[dtype]
    ctx = context_tokens
    kv = 2 * m["num_hidden_layers"] * m["num_key_value_heads"] * m["head_dim"] * ctx * act
    logits = m["vocab_size"] * 4 * 2  # the last position's logits and their softmax, fp32
    weights = weights_bytes(m, backend, dtype)
    overhead = CUDA_CONTEXT if device == "cuda" else OVERHEAD[backend]
    rows = [("weights", weights, f"{fmt_count(m['params'])} parameters in "
             f"{_dtype_note(m, backend, dtype)}"),
            ("KV cache", kv, f"keys and values of {ctx} tokens"),
            ("logits", logits, "one position's, fp32"),
            ("overhead", overhead, "the CUDA context" if device == "cuda" else
             f"Python with {'torch and transformers' if backend == 'torch' else 'mlx-lm'}")]
    total = sum(r[1] for r in rows)
    return {"total_bytes": total, "device": device, "compute_dtype": dtype,
            "breakdown": [{"name": n, "bytes": int(v), "note": t} for n, v, t in rows]}


GENERATE_PROMPT_PLAN = 1024  # prompt tokens planned for beside max_tokens (an arena's prompt)


def generate_plan(models: list[tuple[str, dict[str, Any]]], backend: str,
                  params: dict[str, Any], system: dict[str, Any]) -> dict[str, Any]:
    """The plan of a generate job (an arena's answers): one model loaded at a time, so the
    larger variant's inference estimate with the KV cache of a prompt and ``max_tokens``,
    against the budget. ``models``: (name, facts) of each variant's model. The same keys
    as estimate.plan's; no suggestion (nothing but a smaller model makes it fit)."""
    device = target_device(backend, {}, system)
    ctx = GENERATE_PROMPT_PLAN + int(params.get("max_tokens", 256))
    sized = [(name, inference_estimate(m, backend, device, ctx)) for name, m in models]
    name, est = max(sized, key=lambda item: item[1]["total_bytes"])
    overhead = next(r["bytes"] for r in est["breakdown"] if r["name"] == "overhead")
    est["allocated_bytes"] = est["total_bytes"] - overhead
    est["device_bytes"] = est["total_bytes"] if device == "cuda" else est["allocated_bytes"]
    est["settings"] = {"device": device, "compute_dtype": est["compute_dtype"],
                       "context_tokens": ctx, "model": name}
    budget = budget_for(device, system)
    word, ratio = verdict(est, budget)
    need = f"needs about {fmt_bytes(est['total_bytes'])}"
    out = {"verdict": word, "ratio": round(ratio, 3), "device": device, "estimate": est,
           "budget": budget, "suggestion": None, "advice": ""}
    if word == FITS:
        out["message"] = f"{need} of {fmt_bytes(budget['bytes'])}"
        return out
    weights = est["breakdown"][0]["bytes"]
    out["advice"] = (f"{name} is the larger model (its weights take {fmt_bytes(weights)}): "
                     "answer with a smaller model, or free memory" if word == NO_FIT else
                     "Close to the limit: it may swap or run out.")
    out["message"] = f"{need} ({name}, one model loaded at a time), {budget['note']}. " \
                     f"{out['advice']}" + ("." if word == NO_FIT else "")
    return out
