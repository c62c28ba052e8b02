"""MLX KTO's compiled step (mx.compile, the `compile` knob) against the eager one: the same
model, LoRA weights and batches give the same metrics and the same trained adapter, step
after step with Adam, over batches of different widths: padded to a few shapes, as the job
pads them, and with LoRA dropout on, unpadded (the random state is part of the compiled
state; padded, dropout draws its masks over another shape).
"""

from __future__ import annotations

import pytest

pytest.importorskip("mlx.core")

import mlx.core as mx  # noqa: E402
import mlx.optimizers as mlx_optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from contract.rows import load_kto_dataset  # noqa: E402

RANK, SCALE, BETA, MAX_LENGTH, BATCH, STEPS = 4, 2.0, 0.1, 64, 4, 6
TOL = 1e-5


def _model(model_dir, dropout: float):
    """The demo model with LoRA on every linear layer, B non-zero (seeded: both copies are
    the same)."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, tokenizer = load(str(model_dir))
    model.freeze()
    mx.random.seed(1)
    linear_to_lora_layers(model, len(model.layers),
                          {"rank": RANK, "scale": SCALE, "dropout": dropout})
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    mx.eval(model.parameters())
    return model, tokenizer


def _run(demo, compile: bool, dropout: float, pad_to: int | None = None):
    from workers.mlx.data import tokenize_kto
    from workers.mlx.kto import KTOStep, batch_order, make_batch

    model, tokenizer = _model(demo["model"], dropout)
    examples, _ = tokenize_kto(load_kto_dataset(demo["dataset"]), tokenizer, MAX_LENGTH)
    step = KTOStep(model, mlx_optim.Adam(learning_rate=1e-3), BETA, 1.0, 1.33,
                   compile=compile, pad_to=pad_to)
    model.train()
    mx.random.seed(7)
    order = batch_order(len(examples), BATCH, seed=3)
    metrics, widths = [], set()
    for _ in range(STEPS):
        batch = make_batch([examples[i] for i in next(order)], MAX_LENGTH,
                           tokenizer.pad_token_id)
        widths.add(batch["input_ids"].shape[1])
        metrics.append(step(batch))
    metrics.append(step(batch, update=False))
    adapter = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    return metrics, adapter, widths


@pytest.mark.parametrize(("dropout", "pad_to"), [(0.0, 32), (0.1, None)])
def test_compiled_step_matches_eager(demo, dropout, pad_to):
    eager, eager_adapter, widths = _run(demo, compile=False, dropout=dropout)
    compiled, compiled_adapter, _ = _run(demo, compile=True, dropout=dropout, pad_to=pad_to)
    assert len(widths) > 1  # batches of different widths, padded to a few shapes when compiled
    assert sum(m["kl"] > 0 for m in eager) >= 2  # z0 is not clipped to 0 in every step
    for ours, theirs in zip(compiled, eager, strict=True):
        assert ours.keys() == theirs.keys()
        for name in theirs:
            assert ours[name] == pytest.approx(theirs[name], rel=TOL, abs=TOL), (name, ours,
                                                                                   theirs)
    assert compiled_adapter.keys() == eager_adapter.keys()
    for name, value in eager_adapter.items():
        np.testing.assert_allclose(compiled_adapter[name], value, rtol=TOL, atol=TOL,
                                   err_msg=name)
