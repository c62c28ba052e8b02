"""Will this job fit? Peak memory of a LoRA training job, estimated before it starts.

Pure functions, no I/O: the model's facts come from app.hub.inspect, the machine's from
app.system.machine, the job's settings are the knobs of contract.knobs (TORCH_KTO, MLX_SFT, MLX_KTO)
under their own names. ``plan()`` puts the estimate beside the budget and, when it does not
fit, re-runs the estimate on candidate changes and names the first that fits.

What is counted, and why (checked against TRL 1.16's KTOTrainer and mlx-lm 0.32):
- weights: the base model in the dtype it trains in (torch: the ``dtype`` knob, auto = bf16
  on CUDA and fp32 elsewhere; MLX: as stored, 4-bit stays 4-bit);
- adapter, its gradients and AdamW's two moments, all fp32 (PEFT keeps the adapter in fp32);
- activations kept for the backward pass, per token and layer from the shapes of a
  Llama/Qwen block (with gradient checkpointing only each block's input, plus one block
  recomputed); LoRA dropout keeps its own copy of every adapted input;
- logits: TRL 1.16 never builds batch×seq×vocab logits: its fused LM head projects 4096
  tokens × 32768 vocabulary entries at a time and keeps per-token log-probs (on a CPU the
  tile is folded with a few fp32 temporaries; on CUDA a Triton kernel does it in place).
  MLX builds the whole batch×seq×vocab logits, an fp32 copy and its log-softmax;
- the KTO reference pass: with LoRA the reference is the same model with the adapter off,
  run under no_grad while the policy's activations are still held (TRL runs it after the
  policy forward); ``precompute_ref_log_probs`` moves it before training;
- the KL pass: the policy on the mismatched (x_i, y_{i-1}) batch, under no_grad. TRL runs it
  before the policy forward, so at the peak it is gone; MLX evaluates the whole step as one
  lazy graph, so its logits are there at the peak;
- framework overhead: the Python process with torch/TRL or mlx-lm loaded; on CUDA the
  context and the caching allocator's slack.
The constants were calibrated with bench/planner.py (README, "Memory planner").
A torch job on several processes (``num_processes``) is estimated per GPU on CUDA (ddp or
fsdp) and as N processes elsewhere: app/planner/scale.py; ``plan()`` decides
``distributed: auto`` with ``sharding_for``.
"""

from __future__ import annotations

from typing import Any

# The budgets and verdicts live in budget.py; callers import them from here as before.
from app.planner.budget import (  # noqa: F401
    FIT_RATIO,
    FITS,
    NO_FIT,
    TIGHT,
    budget_for,
    cpu_budget,
    cuda_budget,
    mac_budget,
    target_device,
    verdict,
)
from app.planner.scale import need_text, per_gpu_rows, processes, sharding_of, spread
from app.system.machine import metal_working_set  # noqa: F401
from app.units import fmt_bytes, fmt_count

GB = 1e9  # the calibrated constants below were written in 1e9 bytes; shown in GiB (app.units)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

# Framework overhead, bytes (the tiny demo model's measured peak RSS, bench/planner.py).
OVERHEAD = {"torch": 0.50 * GB, "mlx": 0.36 * GB}
CUDA_CONTEXT = 0.55 * GB  # CUDA context + cuBLAS workspace, outside the allocator's count
ALLOCATOR_SLACK = 0.10  # reserved - allocated in torch's caching allocator, as a fraction
TRL_TOKEN_TILE, TRL_VOCAB_TILE = 4096, 32768  # trl.kernels.chunked_logprob
# Measured activations over the per-block count above, per device (bench/planner.py): CUDA
# keeps less than the count (fused attention, in-place ops), and so does the CPU once glibc
# hands freed blocks back (contract/launch_env.py; before that, retained heap put it at 1.13).
ACTIVATION_SCALE = {"cuda": 0.62, "cpu": 0.76, "mps": 1.0, "gpu": 1.0}
CPU_TILE_TEMPS = 5  # fp32 copies of a tile alive at once when folded with torch ops (CPU)


def torch_dtype(dtype: str, device: str) -> str:
    """What workers/torch/device.py picks: auto is bf16 on CUDA, fp32 on MPS and CPU."""
    if dtype and dtype != "auto":
        return dtype
    return "bfloat16" if device == "cuda" else "float32"


def job_settings(backend: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The knobs that move memory, under one set of names, from either backend's params."""
    p = params
    if backend == "torch":
        targets = p.get("target_modules") or ["all-linear"]
        return {"batch": int(p.get("per_device_train_batch_size", 2)),
                "seq": int(p.get("max_length", 512)),
                "checkpointing": bool(p.get("gradient_checkpointing", True)),
                "rank": int(p.get("r", 8)), "lora_layers": None,
                "targets": [targets] if isinstance(targets, str) else list(targets),
                "dropout": float(p.get("lora_dropout", 0.05)),
                "precompute": bool(p.get("precompute_ref_log_probs", False)),
                "dtype": str(p.get("dtype", "auto"))}
    return {"batch": int(p.get("batch_size", 4)),
            "seq": int(p.get("max_seq_length", 2048 if method == "sft" else 512)),
            "checkpointing": bool(p.get("grad_checkpoint", False)),
            "rank": int(p.get("rank", 8)), "lora_layers": int(p.get("num_layers", 16)),
            "targets": ["all-linear"], "dropout": float(p.get("dropout", 0.0)),
            "precompute": False, "dtype": "auto"}


def block_linears(m: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer of one decoder block, by the usual module names."""
    h, q, kv = m["hidden_size"], m["num_attention_heads"] * m["head_dim"], \
        m["num_key_value_heads"] * m["head_dim"]
    inter = m.get("moe_intermediate_size") or m["intermediate_size"]
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def adapter_params(m: dict[str, Any], backend: str, s: dict[str, Any]) -> int:
    """LoRA parameters: r·(in + out) per adapted linear. PEFT's all-linear adapts every
    block's linears (not MoE experts, which transformers 5 keeps as fused tensors); mlx-lm
    adapts the last num_layers blocks, every expert of a MoE block included."""
    linears = block_linears(m)
    wanted = set(linears) if "all-linear" in s["targets"] else set(s["targets"])
    layers = m["num_hidden_layers"] if s["lora_layers"] is None \
        else min(s["lora_layers"], m["num_hidden_layers"])
    total = 0
    for name, (i, o) in linears.items():
        if name not in wanted:
            continue
        experts = m.get("num_experts") or 0
        if experts and name in ("gate_proj", "up_proj", "down_proj"):
            total += s["rank"] * (i + o) * experts if backend == "mlx" else 0
        else:
            total += s["rank"] * (i + o)
    return total * layers


def weights_bytes(m: dict[str, Any], backend: str, dtype: str) -> float:
    q = m.get("quantization")
    if backend == "mlx":
        if m.get("weights_bytes"):
            return float(m["weights_bytes"])
        if q:  # packed values + an fp16 scale and bias per group
            return m["params"] * (q["bits"] / 8 + 4 / q["group_size"])
        return m["params"] * DTYPE_BYTES.get(m.get("dtype"), 2)
    return m["params"] * DTYPE_BYTES[dtype]


def layer_activation_bytes(m: dict[str, Any], s: dict[str, Any], act: int, lora: bool) -> float:
    """Bytes one block keeps for the backward pass, per token (no checkpointing).

    Saved by autograd for a frozen base with LoRA: each RMSNorm's input (fp32) and output;
    q, k, v, the attention output (k and v repeated to all heads when a padding mask is
    given); the MLP's gate, up, SiLU(gate) and their product; and for each adapted linear
    with dropout the dropped copy of its input plus a one-byte mask.
    """
    h, q = m["hidden_size"], m["num_attention_heads"] * m["head_dim"]
    inter = m.get("active_intermediate_size") or m["intermediate_size"]
    elems = 6 * h + 4 * q + 4 * inter
    if lora and s["dropout"] > 0:
        drop_in = 5 * h + 2 * q + inter  # q, k, v, gate, up see h; o sees q... twice
        elems += drop_in
        return elems * act + drop_in
    return elems * act


def estimate(m: dict[str, Any], backend: str, method: str, params: dict[str, Any],
             device: str = "cpu") -> dict[str, Any]:
    """Peak bytes of the job, broken down. ``device`` is where torch trains (cpu, cuda, mps)
    or where MLX runs (cpu, gpu). Returns total_bytes, allocated_bytes (total less the fixed
    overhead: what the device allocator itself holds), device_bytes (what must fit in the
    accelerator's memory), breakdown [{name, bytes, note}] and the settings used."""
    s = job_settings(backend, method, params)
    b, seq, layers = s["batch"], s["seq"], m["num_hidden_layers"]
    h, vocab = m["hidden_size"], m["vocab_size"]
    tokens = b * seq
    if backend == "torch":
        dtype = torch_dtype(s["dtype"], device)
    else:
        dtype = m.get("dtype") if m.get("dtype") in DTYPE_BYTES else "bfloat16"
        dtype = "float16" if dtype == "float32" and m.get("quantization") else dtype
    act = DTYPE_BYTES[dtype]
    lora_n = adapter_params(m, backend, s)
    lora_layers = layers if s["lora_layers"] is None else min(s["lora_layers"], layers)
    per_layer = layer_activation_bytes(m, s, act, True)
    scale = ACTIVATION_SCALE.get(device, 1.0)
    # MLX needs no activations below the lowest adapted block: nothing there needs a gradient.
    grad_layers = lora_layers if backend == "mlx" else layers
    if s["checkpointing"]:  # block inputs, and one block recomputed in the backward
        saved = tokens * (grad_layers * h * act + per_layer * scale)
    else:  # every block's, and one block's worth of backward temporaries
        saved = tokens * (grad_layers + 1) * per_layer * scale
    kto = method == "kto"
    rows: list[tuple[str, float, str]] = [
        ("weights", weights_bytes(m, backend, dtype),
         f"{fmt_count(m['params'])} parameters in {_dtype_note(m, backend, dtype)}"),
        ("adapter", lora_n * 4.0, f"{fmt_count(lora_n)} LoRA parameters, fp32"),
        ("optimizer", lora_n * 8.0, "AdamW's two moments per adapter parameter, fp32"),
        ("gradients", lora_n * 4.0, "one fp32 gradient per adapter parameter"),
        ("activations", saved,
         ("checkpointing: each block's input, one block recomputed" if s["checkpointing"]
          else f"kept for backward by {grad_layers} blocks") +
         f"; batch {b} × {seq} tokens, backward temporaries included"),
    ]
    if backend == "torch":
        n_tile = min(tokens, TRL_TOKEN_TILE) * min(vocab, TRL_VOCAB_TILE)
        # CUDA: Triton folds the tile in place (one buffer); elsewhere fp32 temporaries.
        head = n_tile * (act if device == "cuda" else act + 4 * CPU_TILE_TEMPS) \
            + tokens * h * (act + 4)
        rows.append(("logits", head, "TRL's fused LM head: one 4096-token × 32768-vocab "
                     "tile at a time, never batch×seq×vocab; the hidden states and their "
                     "fp32 gradient"))
        if kto:
            inter = m.get("active_intermediate_size") or m["intermediate_size"]
            ref = 0.0 if s["precompute"] else tokens * (3 * inter + 4 * h) * act
            rows.append(("reference pass", ref, "precomputed before training: nothing at "
                         "the peak" if s["precompute"] else "adapter off, no_grad, while "
                         "the policy's activations are held: one block's temporaries"))
            rows.append(("KL pass", 0.0, "no_grad, before the policy forward: freed by the "
                         "peak"))
    else:
        logits = tokens * vocab
        if kto:  # model dtype, an fp32 copy, its log-softmax and the gradient
            rows.append(("logits", logits * (act + 12), "batch×seq×vocab in the model's "
                         "dtype, an fp32 copy, log-softmax and gradient"))
            rows.append(("reference pass", logits * (act + 4), "adapter off (LoRA scale "
                         "0): its logits are in the same lazy graph as the step"))
            rows.append(("KL pass", logits * (act + 4), "policy and reference on the "
                         "mismatched batch, evaluated with the step"))
        else:
            rows.append(("logits", logits * act * 3, "batch×seq×vocab logits, their "
                         "log-softmax and gradient, in the model's dtype"))
    n, sharding = processes(backend, params), sharding_of(params)
    if n > 1 and device == "cuda":  # each process on a GPU of its own
        rows = per_gpu_rows(rows, n, sharding, lora_n, layers)
    allocated = sum(r[1] for r in rows)
    if device == "cuda":
        overhead = CUDA_CONTEXT + ALLOCATOR_SLACK * allocated
        note = "CUDA context and the caching allocator's slack"
    else:
        overhead = OVERHEAD[backend]
        note = f"Python with {'torch and TRL' if backend == 'torch' else 'mlx-lm'} loaded"
    rows.append(("overhead", overhead, note))
    total = allocated + overhead
    device_bytes = total if device == "cuda" else allocated
    out = {"total_bytes": total, "allocated_bytes": allocated, "device_bytes": device_bytes,
           "breakdown": [{"name": r, "bytes": int(v), "note": t} for r, v, t in rows],
           "settings": {**s, "device": device, "compute_dtype": dtype,
                        "adapter_params": lora_n}}
    return spread(out, n, sharding, device) if n > 1 else out


def _dtype_note(m: dict[str, Any], backend: str, dtype: str) -> str:
    q = m.get("quantization")
    if backend == "mlx" and q:
        return f"{q['bits']}-bit (group {q['group_size']})"
    return dtype


# --- suggestions -----------------------------------------------------------------------------
def candidates(backend: str, method: str, params: dict[str, Any], m: dict[str, Any],
               mac: bool = False, *, gpus: bool = False):
    """(text, backend, params, model facts) to try, least disruptive first; each step keeps
    what the earlier ones changed. ``gpus``: the job's processes train on CUDA GPUs."""
    p = dict(params)
    min_batch = 2 if method == "kto" else 1
    done: list[str] = []
    if gpus and processes(backend, p) > 1 and sharding_of(p) == "ddp":
        p["distributed"] = "fsdp"
        done.append(f"set distributed to fsdp (the model sharded over {processes(backend, p)} "
                    "GPUs)")
        yield "; ".join(done), backend, dict(p), m
    batch_key = "per_device_train_batch_size" if backend == "torch" else "batch_size"
    seq_key = "max_length" if backend == "torch" else "max_seq_length"
    ckpt_key = "gradient_checkpointing" if backend == "torch" else "grad_checkpoint"
    default_seq = 2048 if backend == "mlx" and method == "sft" else 512
    if not p.get(ckpt_key, backend == "torch"):
        p[ckpt_key] = True
        done.append(f"turn {ckpt_key} on")
        yield "; ".join(done), backend, dict(p), m
    while int(p.get(batch_key, 2 if backend == "torch" else 4)) > min_batch:
        batch = max(min_batch, int(p.get(batch_key, 2 if backend == "torch" else 4)) // 2)
        accum_key = "gradient_accumulation_steps" if backend == "torch" \
            else "grad_accumulation_steps"
        accum = int(p.get(accum_key, 8 if backend == "torch" else 1) or 1)
        accum *= int(p.get(batch_key, 2 if backend == "torch" else 4)) // batch
        p.update({batch_key: batch, accum_key: accum})
        step = f"{batch_key} {batch} with {accum_key} {accum} (the same effective batch)"
        yield "; ".join([*done, step]), backend, dict(p), m
    done.append(f"{batch_key} {p.get(batch_key, min_batch)}")
    while int(p.get(seq_key, default_seq)) > 256:
        p[seq_key] = max(256, int(p.get(seq_key, default_seq)) // 2)
        yield "; ".join([*done, f"{seq_key} {p[seq_key]} (longer rows are truncated)"]), \
            backend, dict(p), m
    if backend == "mlx" and not m.get("quantization"):
        q = {**m, "quantization": {"bits": 4, "group_size": 64}, "weights_bytes": None,
             "dtype": "float16"}
        yield "use a 4-bit MLX model (mlx-community/…-4bit, or mlx_lm.convert -q)", "mlx", \
            dict(params), q
        yield "; ".join([*done, f"{seq_key} {p[seq_key]}", "a 4-bit MLX model"]), "mlx", \
            dict(p), q
    if backend == "torch" and mac and not m.get("quantization"):  # MLX has KTO too
        q = {**m, "quantization": {"bits": 4, "group_size": 64}, "weights_bytes": None,
             "dtype": "float16"}
        mlx = {"batch_size": max(min_batch, int(params.get(batch_key, 2))),
               "max_seq_length": int(params.get(seq_key, 512)), "grad_checkpoint": True,
               "rank": int(params.get("r", 8))}
        yield (f"the MLX backend with a 4-bit model (mlx-community/…-4bit), batch_size "
               f"{mlx['batch_size']}, max_seq_length {mlx['max_seq_length']}, "
               "grad_checkpoint on"), "mlx", mlx, q


def plan(m: dict[str, Any], backend: str, method: str, params: dict[str, Any],
         system: dict[str, Any]) -> dict[str, Any]:
    """The estimate, the budget, the verdict and, unless it fits, the first change that
    does (``suggestion``: text and the params to use, or None when nothing tried fits)."""
    device = target_device(backend, params, system)
    asked = params
    if processes(backend, params) > 1 and params.get("distributed", "auto") == "auto":
        params = {**params, "distributed": sharding_for(m, backend, method, params, system)}
    est = estimate(m, backend, method, params, device)
    budget = budget_for(device, system, params)
    word, ratio = verdict(est, budget)
    out = {"verdict": word, "ratio": round(ratio, 3), "device": device, "estimate": est,
           "budget": budget, "suggestion": None, "message": "", "advice": ""}
    if word == FITS:
        out["message"] = f"needs about {need_text(est)} of {_gb(budget['bytes'])}"
        return out
    if budget.get("problem"):  # too few GPUs here: no smaller setting changes that
        out["advice"] = out["message"] = budget["problem"]
        return out
    best = None
    mac = budget["kind"] == "unified"
    for text, b2, p2, m2 in candidates(backend, method, params, m, mac, gpus=device == "cuda"):
        e2 = estimate(m2, b2, method, p2, target_device(b2, p2, system))
        w2, r2 = verdict(e2, budget)
        if w2 == FITS:
            if asked.get("distributed", "auto") == "auto" and "distributed" in p2:
                p2 = {**p2, "distributed": "auto"}  # auto decides again at launch
            out["suggestion"] = {"text": text, "backend": b2, "params": p2,
                                 "total_bytes": int(e2["total_bytes"]), "verdict": w2,
                                 "need": need_text(e2)}
            break
        if best is None or r2 < best[1]:
            best = (text, r2, e2)
    need = f"needs about {need_text(est)}, {budget['note']}"
    # ``advice``: what to do, once (the form shows it beside the numbers; the API's message
    # is the need and the advice in one sentence).
    if out["suggestion"]:
        out["advice"] = f"To fit: {out['suggestion']['text']} " \
                        f"(about {out['suggestion']['need']})."
    elif word == NO_FIT and mac and est["total_bytes"] <= FIT_RATIO * budget["available"]:
        mb = int(min(budget["total"] - 4 * 2**30, 1.25 * est["device_bytes"]) / 2**20)
        out["advice"] = ("It fits in the free memory but not under Metal's working-set "
                         f"limit: raise it with `sudo sysctl iogpu.wired_limit_mb={mb}` "
                         "(until the next restart), or make the job smaller.")
    elif word == NO_FIT:
        weights = est["breakdown"][0]["bytes"]
        out["advice"] = (f"Nothing tried fits (the weights alone take {_gb(weights)}): "
                         "choose a smaller model"
                         + (", or a 4-bit MLX model" if backend == "torch" else "")
                         + (f"; the closest was: {best[0]}" if best else "") + ".")
    else:
        out["advice"] = "Close to the limit: it may swap or run out."
    out["message"] = f"{need}. {out['advice']}"
    return out


def sharding_for(m: dict[str, Any], backend: str, method: str, params: dict[str, Any],
                 system: dict[str, Any]) -> str:
    """``distributed`` resolved: ddp or fsdp as asked; auto is ddp when its per-GPU estimate
    fits the smallest chosen GPU, else fsdp (which fits, or is refused with the plan's
    advice). Processes on a CPU share one memory: sharding saves nothing there, so ddp."""
    asked = params.get("distributed", "auto")
    if asked in ("ddp", "fsdp"):
        return asked
    device = target_device(backend, params, system)
    if processes(backend, params) <= 1 or device != "cuda":
        return "ddp"
    budget = budget_for(device, system, params)
    ddp = verdict(estimate(m, backend, method, {**params, "distributed": "ddp"}, device),
                  budget)[0]
    if ddp == FITS:
        return "ddp"
    fsdp = verdict(estimate(m, backend, method, {**params, "distributed": "fsdp"}, device),
                   budget)[0]
    return "ddp" if ddp == TIGHT and fsdp == NO_FIT else "fsdp"


_gb = fmt_bytes  # every size in a plan is binary, GiB/MiB (app/units.py)
