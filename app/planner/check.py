"""The planner wired to this machine: inspect the model, read the machine, plan, enforce.

app/planner/estimate.py is pure; this module does the reading (model files,
``app.system.machine``) and holds
the presets from the seed guide's tables (an M4 with 24 GiB, both backends). Shapes of the
preset models are their published config.json sizes, so a preset is planned even before its
model is in the local cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import get_settings
from app.hub.cache import missing_model
from app.hub.inspect import ModelInfoError, _sizes, inspect_model, params_from_config
from app.planner.estimate import FIT_RATIO, FITS, NO_FIT, TIGHT, budget_for, plan, target_device
from app.planner.inference import generate_plan
from app.units import fmt_bytes
from contract.model_ref import hub_id_problem, is_folder_path

SEED_KTO = dict(per_device_train_batch_size=2, gradient_accumulation_steps=8,
                learning_rate=5e-7, max_length=512, beta=0.1, gradient_checkpointing=True)
SEED_MLX = dict(batch_size=4, num_layers=16, rank=8, learning_rate=1e-5, max_seq_length=1024,
                grad_checkpoint=True)


def _shape(h, inter, layers, heads, kv, vocab, tied, head_dim=None, **more) -> dict:
    return dict(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                tie_word_embeddings=tied, head_dim=head_dim or h // heads, **more)


SHAPES = {  # published config.json sizes
    "qwen2-0.5b": _shape(896, 4864, 24, 14, 2, 151936, True, model_type="qwen2"),
    "qwen2.5-3b": _shape(2048, 11008, 36, 16, 2, 151936, True, model_type="qwen2"),
    "llama-3.2-3b": _shape(3072, 8192, 28, 24, 8, 128256, True),
    "mistral-7b": _shape(4096, 14336, 32, 32, 8, 32768, False),
    "qwen2.5-7b": _shape(3584, 18944, 28, 28, 4, 152064, False, model_type="qwen2"),
    "llama-3.1-8b": _shape(4096, 14336, 32, 32, 8, 128256, False),
    "qwen3-14b": _shape(5120, 17408, 40, 40, 8, 151936, False, head_dim=128),
    "qwen3-30b-a3b": _shape(2048, 6144, 48, 32, 4, 151936, False, head_dim=128,
                            num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
}
Q4 = {"bits": 4, "group_size": 64}
# (id, title, backend, method, model, shape, quantization, params, what the seed guide says)
_PRESETS = [
    ("torch-qwen2-0.5b", "Qwen2-0.5B · torch KTO", "torch", "kto",
     "Qwen/Qwen2-0.5B-Instruct", "qwen2-0.5b", None, SEED_KTO, "~2 GiB (FP16), excellent"),
    ("torch-qwen2.5-3b", "Qwen2.5-3B · torch KTO", "torch", "kto",
     "Qwen/Qwen2.5-3B-Instruct", "qwen2.5-3b", None, SEED_KTO, "~6 GiB (FP16), excellent"),
    ("torch-llama-3.2-3b", "Llama-3.2-3B · torch KTO", "torch", "kto",
     "meta-llama/Llama-3.2-3B-Instruct", "llama-3.2-3b", None, SEED_KTO,
     "~6 GiB (FP16), excellent"),
    ("torch-mistral-7b", "Mistral-7B · torch KTO", "torch", "kto",
     "mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b", None,
     dict(SEED_KTO, per_device_train_batch_size=2, dtype="float16"),
     "~14 GiB (FP16), good (tight)"),
    ("torch-qwen2.5-7b", "Qwen2.5-7B · torch KTO", "torch", "kto", "Qwen/Qwen2.5-7B-Instruct",
     "qwen2.5-7b", None, dict(SEED_KTO, dtype="float16"), "~14 GiB (FP16), good (tight)"),
    ("torch-llama-3.1-8b", "Llama-3.1-8B · torch KTO", "torch", "kto",
     "meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b", None, dict(SEED_KTO, dtype="float16"),
     "~16 GiB (FP16), marginal"),
    ("mlx-qwen2.5-3b", "Qwen2.5-3B · MLX LoRA", "mlx", "sft", "Qwen/Qwen2.5-3B-Instruct",
     "qwen2.5-3b", None, dict(SEED_MLX, batch_size=8), "~6 GiB (FP16), excellent"),
    ("mlx-llama-3.2-3b", "Llama-3.2-3B · MLX LoRA", "mlx", "sft",
     "meta-llama/Llama-3.2-3B-Instruct", "llama-3.2-3b", None, dict(SEED_MLX, batch_size=8),
     "~6 GiB (FP16), excellent"),
    ("mlx-mistral-7b", "Mistral-7B · MLX LoRA", "mlx", "sft",
     "mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b", None, SEED_MLX, "~14 GiB, good"),
    ("mlx-qwen2.5-7b", "Qwen2.5-7B · MLX LoRA", "mlx", "sft", "Qwen/Qwen2.5-7B-Instruct",
     "qwen2.5-7b", None, SEED_MLX, "~14 GiB, good"),
    ("mlx-llama-3.1-8b-4bit", "Llama-3.1-8B 4-bit · MLX LoRA", "mlx", "sft",
     "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit", "llama-3.1-8b", Q4, SEED_MLX,
     "~8 GiB (4-bit), good"),
    ("mlx-qwen3-14b-4bit", "Qwen3-14B 4-bit · MLX LoRA", "mlx", "sft",
     "mlx-community/Qwen3-14B-4bit", "qwen3-14b", Q4, dict(SEED_MLX, batch_size=2),
     "~12 GiB (4-bit), feasible"),
    ("mlx-qwen3-30b-a3b-4bit", "Qwen3-30B-A3B (MoE) 4-bit · MLX LoRA", "mlx", "sft",
     "mlx-community/Qwen3-30B-A3B-4bit", "qwen3-30b-a3b", Q4,
     dict(SEED_MLX, batch_size=2, max_seq_length=512), "~16 GiB (4-bit), marginal"),
]


def shape_facts(shape: str, quantization: dict | None = None) -> dict[str, Any]:
    """Planner facts for a named shape, as inspect_model would give them for its files."""
    c = SHAPES[shape]
    facts = _sizes(c)
    return {"path": None, "model_type": c.get("model_type", "llama"), "architectures": [],
            "params": params_from_config(facts), "params_source": "config",
            "weights_bytes": None, "dtype": "float16" if quantization else "bfloat16",
            "quantization": quantization, **facts}


def presets() -> list[dict[str, Any]]:
    return [{"id": i, "title": t, "backend": b, "method": m, "model": model, "shape": s,
             "quantization": q, "params": dict(p), "seed_says": says}
            for i, t, b, m, model, s, q, p, says in _PRESETS]


def form_presets() -> list[dict[str, Any]]:
    """The presets with ``here``: whether their model is in the local cache (the form marks
    the others and names the download command)."""
    return [{**p, "here": missing_model(p["model"]) is None} for p in presets()]


def preset(preset_id: str) -> dict[str, Any] | None:
    return next((p for p in presets() if p["id"] == preset_id), None)


def model_facts(model: str) -> tuple[dict[str, Any] | None, str]:
    """Facts from the model's files, else from a preset's published shape; or None and why."""
    try:
        return inspect_model(model), ""
    except ModelInfoError as exc:
        known = next((p for p in presets() if p["model"] == model), None)
        if known:
            return shape_facts(known["shape"], known["quantization"]), \
                "planned from the model's published shape (not in the local cache)"
        return None, str(exc)


def plan_job(model: str, backend: str, method: str, params: dict[str, Any],
             system: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plan, or verdict "unknown" with a note when the model cannot be read (the job is
    never blocked then). ``model`` is the resolved path or hub id; a generate job's model B
    is ``params["model_b"]`` (resolved too), planned with inference_estimate."""
    if backend == "hub":  # a download fetches files: it loads no model, holds no memory
        return {"verdict": "unknown", "message": "a download loads no model",
                "note": "download", "suggestion": None, "model_missing": None}
    facts, note = model_facts(model)
    missing = None if is_folder_path(model) or hub_id_problem(model) else missing_model(model)
    if facts is None:
        return {"verdict": "unknown", "message": f"no memory check: {note}", "note": note,
                "suggestion": None, "model_missing": missing}
    if system is None:
        system = machine()
    if method == "generate":  # one model loaded at a time: the larger variant's
        b = str(params.get("model_b") or "").strip()
        facts_b = model_facts(b)[0] if b and b != model else None
        variants = [(model, facts)] + ([(b, facts_b)] if facts_b else [])
        out = generate_plan(variants, backend, params, system)
    else:
        out = plan(facts, backend, method, params, system)
    out["model"] = {k: facts.get(k) for k in (
        "params", "num_hidden_layers", "hidden_size", "vocab_size", "dtype", "quantization",
        "params_source")}
    out["note"] = note
    out["model_missing"] = missing  # a verdict on a model that is not here says so
    if missing:
        out["message"] += (f" The model is not on this machine yet: get it with "
                           f"`{missing['command']}`.")
    return out


class DoesNotFit(ValueError):
    def __init__(self, result: dict[str, Any]):
        super().__init__(result["message"])
        self.result = result


def check_fits(model: str, backend: str, method: str, params: dict[str, Any],
               system: dict[str, Any] | None = None) -> dict[str, Any]:
    """Raise DoesNotFit when the plan says the job won't fit; else return the plan."""
    result = plan_job(model, backend, method, params, system)
    if result["verdict"] == NO_FIT:
        raise DoesNotFit(result)
    return result


def choose_sharding(model: str, backend: str, method: str, params: dict[str, Any],
                    system: dict[str, Any] | None = None) -> str:
    """"ddp" or "fsdp" for a torch job on several processes (``distributed`` auto decided
    by the per-GPU plan: ddp when it fits the smallest chosen GPU, else fsdp); DoesNotFit
    when neither fits. A model that cannot be read is not planned: ddp, the default."""
    asked = params.get("distributed", "auto")
    if asked in ("ddp", "fsdp"):
        return asked
    facts, _ = model_facts(model)
    if facts is None or backend != "torch":
        return "ddp"
    result = plan(facts, backend, method, params, machine() if system is None else system)
    if result["verdict"] == NO_FIT:
        raise DoesNotFit(result)
    return result["estimate"].get("sharding", "ddp")


# --- what Prospect itself holds ------------------------------------------------------------
# Loaded inference models are Prospect's to stop: a job about to start unloads them when it
# needs the room (app/inference/manager.py registers how much they hold). So the memory the
# machine reports free, which excludes them, is planned with their memory counted back in.
_reclaimable: Callable[[], tuple[int, int]] | None = None


def set_reclaimable(probe: Callable[[], tuple[int, int]] | None) -> None:
    """``probe()`` -> (resident bytes, accelerator bytes) Prospect could free by unloading."""
    global _reclaimable
    _reclaimable = probe


def budget_cap_bytes() -> int | None:
    """PROSPECT_MEMORY_BUDGET_GB: the most memory Prospect plans with (None: no cap)."""
    gb = get_settings().memory_budget_gb
    return int(gb * 2**30) if gb else None


def machine(held: tuple[int, int] = (0, 0), cap: int | None = None,
            system: dict[str, Any] | None = None, reclaim: bool = True) -> dict[str, Any]:
    """system_info() as the planner sees it: memory our own processes hold (``held``, and
    with ``reclaim`` what loaded models hold) counted as free, no more than the budget cap."""
    if system is None:
        from app.system.machine import system_info

        system = system_info()
    rss, device = held
    if reclaim and _reclaimable is not None:
        more = _reclaimable()
        rss, device = rss + more[0], device + more[1]
    cap = budget_cap_bytes() if cap is None else cap
    out = dict(system)
    avail = int(out.get("memory_available_bytes") or 0) + rss
    out["memory_available_bytes"] = min(avail, cap) if cap else avail
    if out.get("cuda_devices"):
        out["cuda_devices"] = [
            {**d, "memory_free_bytes": min((d.get("memory_free_bytes") or 0) + device, cap)
             if cap else (d.get("memory_free_bytes") or 0) + device}
            for d in out["cuda_devices"]]
    if cap:
        out["memory_total_bytes"] = min(int(out.get("memory_total_bytes") or cap), cap)
        out["memory_budget_cap_bytes"] = cap
    return out


def plan_beside(new: dict[str, Any], others: list[dict[str, Any]], device: str,
                system: dict[str, Any]) -> dict[str, Any]:
    """Does ``new`` ({name, bytes}) fit beside ``others`` (running jobs at their planned peak,
    loaded models at what they hold)? ``system`` is machine() with what they hold now counted
    back in, so nothing is counted twice. Returns verdict, ratio, need/budget bytes, items
    and a message that names the biggest holders."""
    budget = budget_for(device, system)
    limit = min(b for b in (budget["available"], budget.get("device_limit")) if b) \
        if budget["available"] or budget.get("device_limit") else 0
    need = new["bytes"] + sum(o["bytes"] for o in others)
    ratio = need / max(limit, 1)
    word = FITS if ratio <= FIT_RATIO else TIGHT if ratio <= 1.0 else NO_FIT
    items = [new, *others]
    beside = "; ".join(f"{o['name']} at {fmt_bytes(o['bytes'])}" for o in others)
    cap = system.get("memory_budget_cap_bytes")
    note = f"PROSPECT_MEMORY_BUDGET_GB allows {fmt_bytes(cap)}" if cap and limit >= cap \
        else budget["note"]
    message = (f"{new['name']} needs about {fmt_bytes(new['bytes'])}"
               + (f" beside {beside}" if others else "")
               + f": {fmt_bytes(need)} of {fmt_bytes(limit)} ({note})")
    return {"verdict": word, "ratio": round(ratio, 3), "need_bytes": int(need),
            "budget_bytes": int(limit), "device": device, "items": items, "message": message}


def device_for(backend: str, system: dict[str, Any]) -> str:
    return target_device(backend, {}, system)
