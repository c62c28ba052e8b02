"""The planner's "smaller batch" suggestions keep the effective batch on both backends: MLX
has grad_accumulation_steps now (mlx-lm's name), as torch has gradient_accumulation_steps."""

from __future__ import annotations

from app.planner.estimate import candidates


def _batch_steps(backend: str, params: dict) -> list[tuple[str, dict]]:
    key = "per_device_train_batch_size" if backend == "torch" else "batch_size"
    return [(text, p) for text, _, p, _ in candidates(backend, "kto", params, {})
            if key in text and "with" in text]


def test_mlx_smaller_batch_keeps_the_effective_batch():
    steps = _batch_steps("mlx", {"batch_size": 16, "grad_accumulation_steps": 1,
                                 "grad_checkpoint": True})
    assert [p["batch_size"] for _, p in steps] == [8, 4, 2]
    assert all(p["batch_size"] * p["grad_accumulation_steps"] == 16 for _, p in steps)
    assert "grad_accumulation_steps 8 (the same effective batch)" in steps[-1][0]
    assert not any("no gradient accumulation" in text for text, _ in steps)


def test_torch_smaller_batch_keeps_the_effective_batch():
    steps = _batch_steps("torch", {"per_device_train_batch_size": 8,
                                   "gradient_accumulation_steps": 2,
                                   "gradient_checkpointing": True})
    assert all(p["per_device_train_batch_size"] * p["gradient_accumulation_steps"] == 16
               for _, p in steps)
