"""Auto-tuning's plan (``tune: auto``): the speed settings worth timing, pruned by the memory
planner, fastest-first by a simple model; the worker times them (workers/tune.py).

Pure functions, like app/planner/estimate.py. What is varied (contract/tune.py SPEED_KNOBS),
always keeping the job's effective batch E = per-device batch × accumulation:
- the per-device batch b: 1 (SFT only), 2, 4, 8, … and E itself, each dividing E, with
  accumulation E / b;
- activation checkpointing on and off;
- torch KTO: ``precompute_ref_log_probs``, only where it pays: more than one pass over the
  data (the reference pass is then done once, not every epoch), or where memory is the limit
  (the setting fits with it and not without);
- torch KTO on CUDA: ``use_liger_kernel`` when the liger-kernel package is installed (never
  with precompute, which TRL refuses);
- MLX: the batch split and ``grad_checkpoint``; ``compile`` stays as the job has it (on by
  default; off is never faster once compiled, and a job that turned it off had a reason).
The dtype is not varied: auto is already bf16 on CUDA, and on a CPU or MPS bf16 changes
the numbers more than it speeds them up.

A torch job on N processes (``num_processes``) keeps per-device batch × accumulation × N:
N is fixed, so the grid is the one above, each setting estimated per GPU (ddp or fsdp as the
launch decides, app/planner/scale.py) against the smallest chosen GPU; N processes on a CPU
share its memory. The worker does not time probes under several processes: it trains with
the plan's first setting.

Each setting is estimated with ``estimate()`` and kept only when it fits with a margin:
``FIT_RATIO`` of the budget on CUDA (a probe that runs out of memory there is caught), a
stricter ``HOST_RATIO`` on a CPU or a Mac, where running out of memory may kill the worker.

The speed model (only to order the candidates and to size the probe's time): one micro-step
costs an overhead (Python, kernel launches, the optimizer's share: per device, a fixed part
and one per block) plus compute, 2 × parameters × tokens × passes / the device's rate, where
passes count a forward as 1 and a backward as 2: the policy's forward and backward 3,
checkpointing +1, KTO's KL and reference forwards +3 (precomputed: +1, the reference pass
spread over the epochs). Predicted samples/s = b / that. Bigger batches without
checkpointing come first, as measured on an H200 (issue 14: batch 32 without checkpointing
14.8× the seed defaults); the constants are rough and never decide alone: the probe does.
"""

from __future__ import annotations

from typing import Any

from app.planner.estimate import (
    FIT_RATIO,
    budget_for,
    estimate,
    sharding_for,
    target_device,
    verdict,
)
from app.planner.scale import processes
from contract.knobs import method_for
from contract.tune import BATCH_KNOBS, Candidate, TunePlan, effective_batch

HOST_RATIO = 0.7  # CPU and unified memory: an out-of-memory there may kill the worker
MAX_CANDIDATES = 5
PER_BATCH = 2  # at most this many candidates share a per-device batch (variety in the probe)
PROBE_STEPS = 3
PROBE_SHARE, PROBE_MAX_S, PROBE_UNKNOWN_S = 0.05, 120.0, 60.0
# Per micro-step overhead (s: fixed, and per block) and sustained compute (FLOP/s), per
# device. CUDA from issue 14's H200 numbers (Qwen2-0.5B, 512 tokens: batch 2 with
# checkpointing 4.2 samples/s, batch 32 without 62.1: the small step is nearly all
# overhead); the CPU from its tiny-model bench (27 steps/s at batch 4 × 64 tokens).
OVERHEAD_S = {"cuda": (0.05, 0.0167), "mps": (0.03, 0.004), "gpu": (0.03, 0.004),
              "cpu": (0.03, 0.001)}
RATE = {"cuda": 8e14, "mps": 1e13, "gpu": 1e13, "cpu": 1e11}
CKPT = {"torch": "gradient_checkpointing", "mlx": "grad_checkpoint"}


def batch_sizes(e: int, method: str) -> list[int]:
    """Per-device batches that divide the effective batch: powers of two and E itself."""
    low = 2 if method == "kto" else 1
    sizes = {b for b in (2 ** i for i in range(13)) if b <= e and e % b == 0} | {e}
    return sorted(b for b in sizes if b >= low)


def settings_for(backend: str, b: int, e: int, ckpt: bool, *, precompute: bool = False,
                 liger: bool = False, compile_: bool = True) -> dict[str, Any]:
    batch, accum = BATCH_KNOBS[backend]
    out: dict[str, Any] = {batch: b, accum: e // b, CKPT[backend]: ckpt}
    if backend == "torch":
        out.update(precompute_ref_log_probs=precompute, use_liger_kernel=liger)
    else:
        out["compile"] = compile_
    return out


def label(backend: str, s: dict[str, Any]) -> str:
    """"batch 16 × 1, no checkpointing" (+ precomputed reference, Liger kernels)."""
    batch, accum = BATCH_KNOBS[backend]
    parts = [f"batch {s.get(batch, '?')} × {s.get(accum, '?')}",
             "checkpointing" if s.get(CKPT[backend]) else "no checkpointing"]
    if s.get("precompute_ref_log_probs"):
        parts.append("precomputed reference")
    if s.get("use_liger_kernel"):
        parts.append("Liger kernels")
    if s.get("compile") is False:
        parts.append("not compiled")
    return ", ".join(parts)


def passes(method: str, s: dict[str, Any], epochs: float) -> float:
    """Forward-equivalents per sample (see the module's docstring)."""
    n = 3.0 + (1.0 if s.get("gradient_checkpointing") or s.get("grad_checkpoint") else 0.0)
    if method == "kto":
        n += 1.0 + (2.0 / max(epochs, 1.0) if s.get("precompute_ref_log_probs") else 2.0)
    return n


def step_seconds(m: dict[str, Any], backend: str, method: str, s: dict[str, Any], seq: int,
                 device: str, epochs: float = 1.0) -> float:
    """Predicted seconds of one micro-step of ``s[batch]`` rows of ``seq`` tokens."""
    b = int(s[BATCH_KNOBS[backend][0]])
    flops = 2.0 * float(m.get("params") or 0) * b * seq * passes(method, s, epochs)
    if s.get("use_liger_kernel"):
        flops *= liger_factor(b)
    fixed, per_block = OVERHEAD_S.get(device, OVERHEAD_S["cpu"])
    overhead = fixed + per_block * int(m.get("num_hidden_layers") or 24)
    return overhead + flops / RATE.get(device, 1e11)


def liger_factor(batch: int) -> float:
    """Liger's fused kernels against plain TRL, as measured on an H200 (Qwen2-0.5B shape, 512
    tokens, no checkpointing): slower at batch 16 (36.2 against 39.0 samples/s), a little
    faster at 32 (66.0 against 62.9), much faster at 64 (93.3 against 70.4), where the LM
    head's logits dominate."""
    return 1.08 if batch < 32 else 0.95 if batch < 64 else 0.75


def samples_per_s(m: dict[str, Any], backend: str, method: str, s: dict[str, Any], seq: int,
                  device: str, epochs: float = 1.0) -> float:
    b = int(s[BATCH_KNOBS[backend][0]])
    return b / step_seconds(m, backend, method, s, seq, device, epochs)


def passes_over_data(params: dict[str, Any], rows: int | None, e: int) -> float:
    """How many times training reads the dataset (1 when it cannot be told)."""
    if "iters" in params:  # MLX: iters optimizer steps of E rows
        return int(params["iters"]) * e / rows if rows else 1.0
    if int(params.get("max_steps", -1) or -1) > 0:
        return int(params["max_steps"]) * e / rows if rows else 1.0
    return float(params.get("num_train_epochs", 1.0) or 1.0)


def baseline(backend: str, method: str, e: int, compile_: bool) -> dict[str, Any]:
    """The seed defaults' speed knobs (contract/knobs.py) at the job's effective batch: the
    default per-device batch where it divides E, else the largest divisor below it."""
    d = method_for(backend, method).defaults()
    batch = BATCH_KNOBS[backend][0]
    sizes = batch_sizes(e, method)
    below = [b for b in sizes if b <= int(d[batch])]
    b = max(below) if below else min(sizes)
    return settings_for(backend, b, e, bool(d[CKPT[backend]]),
                        precompute=bool(d.get("precompute_ref_log_probs", False)),
                        liger=bool(d.get("use_liger_kernel", False)),
                        compile_=bool(d.get("compile", compile_)))


def probe_budget(expected_s: float | None) -> float:
    """At most 5 % of the job's expected time, never more than two minutes."""
    if expected_s is None:
        return PROBE_UNKNOWN_S
    return round(min(PROBE_MAX_S, PROBE_SHARE * max(expected_s, 0.0)), 1)


def grid(backend: str, method: str, params: dict[str, Any], device: str,
         kernels: bool) -> list[dict[str, Any]]:
    """Every setting auto may choose for this job (before pruning by memory)."""
    e = effective_batch(backend, params)
    compile_ = bool(params.get("compile", True))
    out = []
    for b in batch_sizes(e, method):
        for ckpt in (False, True):
            out.append(settings_for(backend, b, e, ckpt, compile_=compile_))
            if backend == "torch" and method == "kto":
                out.append(settings_for(backend, b, e, ckpt, precompute=True))
                if kernels and device == "cuda":
                    out.append(settings_for(backend, b, e, ckpt, liger=True))
    return out


def tune_plan(m: dict[str, Any], backend: str, method: str, params: dict[str, Any],
              system: dict[str, Any], *, expected_s: float | None = None,
              rows: int | None = None, kernels: bool = False) -> TunePlan | None:
    """The candidates that fit, fastest-first by the model above, at most MAX_CANDIDATES
    (PER_BATCH per per-device batch); None when none fits (the worker then trains with the
    knobs as given). ``params`` are the job's full knobs; ``expected_s`` the job's expected
    time from past runs (else the model's); ``rows`` the dataset's training rows;
    ``kernels`` whether liger-kernel is installed."""
    device = target_device(backend, params, system)
    n = processes(backend, params)
    if n > 1 and params.get("distributed", "auto") == "auto":  # as the launch will decide
        params = {**params, "distributed": sharding_for(m, backend, method, params, system)}
    budget = budget_for(device, system, params)
    limit = FIT_RATIO if device == "cuda" else HOST_RATIO
    e = effective_batch(backend, params)
    seq = int(params.get("max_length") or params.get("max_seq_length") or 512)
    epochs = passes_over_data(params, rows, e)

    def fits(s: dict[str, Any]) -> tuple[bool, int]:
        est = estimate(m, backend, method, {**params, **s}, device)
        return verdict(est, budget)[1] <= limit, int(est["total_bytes"])

    kept: list[tuple[float, Candidate]] = []
    for s in grid(backend, method, params, device, kernels):
        ok, need = fits(s)
        if not ok:
            continue
        if s.get("precompute_ref_log_probs") and epochs <= 1.0 \
                and fits({**s, "precompute_ref_log_probs": False})[0]:
            continue  # one pass: precomputing saves nothing, and memory is no limit here
        speed = samples_per_s(m, backend, method, s, seq, device, epochs)
        kept.append((speed, Candidate(settings=s, estimate_bytes=need,
                                      label=label(backend, s))))
    kept.sort(key=lambda t: -t[0])
    chosen: list[Candidate] = []
    per_batch: dict[int, int] = {}
    for _, c in kept:
        b = int(c.settings[BATCH_KNOBS[backend][0]])
        if per_batch.get(b, 0) >= PER_BATCH:
            continue
        per_batch[b] = per_batch.get(b, 0) + 1
        chosen.append(c)
        if len(chosen) >= MAX_CANDIDATES:
            break
    if not chosen:
        return None
    base = baseline(backend, method, e, bool(params.get("compile", True)))
    if not fits(base)[0]:
        base = {}  # never timed: where it may not fit, measuring it could kill the worker
    if expected_s is None:
        samples = _samples(params, backend, rows, e)
        given = {k: params[k] for k in chosen[0].settings if k in params}
        if samples:
            expected_s = samples / samples_per_s(m, backend, method, given, seq, device,
                                                 epochs)
    limit_bytes = min(b for b in (budget["available"], budget.get("device_limit")) if b) \
        if budget["available"] or budget.get("device_limit") else 0
    return TunePlan(candidates=chosen, baseline=base, budget_bytes=int(limit_bytes),
                    device_total_bytes=int(budget.get("total") or 0),
                    probe_budget_s=probe_budget(expected_s), probe_steps=PROBE_STEPS,
                    effective_batch=e * n)


def _samples(params: dict[str, Any], backend: str, rows: int | None, e: int) -> int | None:
    if backend == "mlx":
        return int(params.get("iters", 0)) * e
    if int(params.get("max_steps", -1) or -1) > 0:
        return int(params["max_steps"]) * e
    return int(float(params.get("num_train_epochs", 1.0)) * rows) if rows else None


ROOMY_SHARE = 0.1  # a job planned under a tenth of the budget leaves the machine idle


def larger_batch_hint(plan: dict[str, Any], e: int) -> str | None:
    """The form's hint on a large machine: the plan says this job uses a small share of the
    budget, so a larger effective batch would train faster. Auto-tuning never changes it."""
    if plan.get("verdict") != "fits" or not e or float(plan.get("ratio") or 1) > ROOMY_SHARE:
        return None
    return (f"This job plans {plan['ratio']:.0%} of the memory: a larger effective batch "
            f"(e.g. {4 * e} instead of {e}) would use this machine better and train faster "
            "per sample. It changes the training (fewer, larger steps; raise the learning "
            "rate with it), so auto-tuning never does it for you.")
