"""The memory of an inference worker holding a model (the playground and /v1): pure, like
app/planner/estimate.py, whose sizes it uses."""

from __future__ import annotations

from typing import Any

from app.planner.estimate import (
    CUDA_CONTEXT,
    DTYPE_BYTES,
    OVERHEAD,
    _dtype_note,
    torch_dtype,
    weights_bytes,
)
from app.units import fmt_count

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
