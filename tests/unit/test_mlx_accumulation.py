"""grad_accumulation_steps in the MLX steps (workers/mlx/kto.py's KTOStep, workers/mlx/sft.py's
SFTStep), on a tiny Llama built in memory (random weights and tokens, CPU).

- One update over micro-batches is the mean of their gradients (each of its own mean loss),
  one optimizer update: checked against gradients taken by hand, eager and compiled.
- KTO: each micro-batch has its own KL pairs and z0, as TRL's per-device batches do under
  accumulation. Where z0 is the same (a fresh adapter's first step: the policy is the
  reference, z0 = 0), batch 2 × 2 gives the same first update as batch 4 × 1; past it the
  z0 of two rows differs from that of four, so later updates differ (checked too).
- SFT: the loss is a token mean per micro-batch, so 2 × 2 equals 4 × 1 when the micro-batches
  have equal token counts (mlx-lm's accumulation does the same).
"""

from __future__ import annotations

import pytest

pytest.importorskip("mlx_lm")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten, tree_map  # noqa: E402

TINY = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
            num_attention_heads=2, num_key_value_heads=1, vocab_size=97, rms_norm_eps=1e-6,
            tie_word_embeddings=True)
LR, BETA = 0.5, 0.1


def tiny_model(b_scale: float = 0.0):
    """A tiny Llama with LoRA on every linear layer; B random when ``b_scale`` (else 0: the
    policy is the reference)."""
    from mlx_lm.models.llama import Model, ModelArgs
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model = Model(ModelArgs(**TINY))
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 2.0, "dropout": 0.0})
    if b_scale:
        for _, module in model.named_modules():
            if hasattr(module, "lora_b"):
                module.lora_b = mx.random.normal(module.lora_b.shape) * b_scale
    mx.eval(model.parameters())
    model.train()
    return model


def kto_examples(n: int = 8, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"prompt_ids": rng.integers(3, 97, int(rng.integers(4, 9))).tolist(),
             "completion_ids": rng.integers(3, 97, int(rng.integers(3, 12))).tolist(),
             "label": i % 3 != 0} for i in range(n)]


def adapter(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def kto_batches(rows, size):
    from workers.mlx.kto import make_batch

    return [make_batch(rows[i : i + size], 64, 0) for i in range(0, len(rows), size)]


def run_kto(rows, batch_size: int, steps: int, compile: bool, b_scale: float = 0.0):
    from workers.mlx.kto import KTOStep

    model = tiny_model(b_scale)
    step = KTOStep(model, optim.SGD(learning_rate=LR), BETA, 1.0, 1.33, compile=compile)
    metrics = [step(kto_batches(rows, batch_size)) for _ in range(steps)]
    return metrics, adapter(model)


def close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("compile", [False, True])
def test_kto_two_by_two_first_update_is_batch_four(compile):
    rows = kto_examples(4)
    one, one_adapter = run_kto(rows, 4, 1, compile)
    two, two_adapter = run_kto(rows, 2, 1, compile)
    assert one[0]["kl"] == 0 and two[0]["kl"] == 0  # a fresh adapter: z0 = 0 either way
    for name in one[0]:
        assert two[0][name] == pytest.approx(one[0][name], rel=1e-5, abs=1e-6), name
    before = adapter(tiny_model())
    assert any(np.abs(one_adapter[k] - before[k]).max() > 1e-4 for k in before)  # it moved
    close(two_adapter, one_adapter)
    # Where the policy differs from the reference, z0 over two rows is not z0 over four, so
    # the update differs (TRL's KTO under accumulation does the same).
    rows = kto_examples(4, seed=1)
    one, one_adapter = run_kto(rows, 4, 1, compile, b_scale=0.3)
    two, two_adapter = run_kto(rows, 2, 1, compile, b_scale=0.3)
    assert one[0]["kl"] > 0 and two[0]["kl"] != pytest.approx(one[0]["kl"], rel=1e-3)
    assert any(np.abs(one_adapter[k] - two_adapter[k]).max() > 1e-6 for k in one_adapter)


def _by_hand_kto(rows, batch_size, b_scale):
    """One SGD update with the mean of each micro-batch's gradient, each taken by hand."""
    from workers.mlx.kto import kto_loss, reference_terms

    model = tiny_model(b_scale)
    value_and_grad = nn.value_and_grad(model, kto_loss)
    grads, kls = [], []
    for batch in kto_batches(rows, batch_size):
        ref_logps, z0 = reference_terms(model, batch)
        kls.append(z0.item())
        _, g = value_and_grad(model, batch["input_ids"], batch["completion_mask"],
                              batch["label"], ref_logps, z0, BETA, 1.0, 1.33)
        grads.append(g)
    mean = tree_map(lambda *g: sum(g[1:], g[0]) / len(g), *grads)
    optim.SGD(learning_rate=LR).update(model, mean)
    mx.eval(model.parameters())
    return adapter(model), kls


@pytest.mark.parametrize("compile", [False, True])
def test_kto_accumulation_is_the_mean_of_micro_batch_gradients(compile):
    rows = kto_examples(6, seed=1)
    expected, kls = _by_hand_kto(rows, 2, b_scale=0.3)
    assert len(set(kls)) > 1 and max(kls) > 0  # each micro-batch its own z0, not all 0
    metrics, got = run_kto(rows, 2, 1, compile, b_scale=0.3)
    close(got, expected)
    assert metrics[0]["kl"] == pytest.approx(np.mean(kls), rel=1e-5)


def test_kto_metrics_only_leave_the_adapter_alone():
    from workers.mlx.kto import KTOStep

    model = tiny_model(0.3)
    before = adapter(model)
    step = KTOStep(model, optim.SGD(learning_rate=LR), BETA, 1.0, 1.0, compile=False)
    measured = step(kto_batches(kto_examples(4), 2), update=False)
    close(adapter(model), before, 0)
    assert set(measured) >= {"loss", "kl", "rewards/chosen", "rewards/rejected"}


def sft_batch(rows: int, length: int, seed: int = 0):
    """An iterate_batches-shaped batch: ids padded to 1 + 32k, (offset, length) per row."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, 33), np.int32)
    ids[:, :length] = rng.integers(3, 97, (rows, length))
    return mx.array(ids), mx.array([[3, length]] * rows)


@pytest.mark.parametrize("compile", [False, True])
def test_sft_two_by_two_is_batch_four_with_equal_token_counts(compile):
    from workers.mlx.sft import SFTStep, split

    batch, lengths = sft_batch(4, 20)
    results = {}
    for size, accum in ((4, 1), (2, 2)):
        model = tiny_model(0.3)
        step = SFTStep(model, optim.SGD(learning_rate=LR), accum, compile=compile)
        micro = split(batch, lengths, size)
        assert len(micro) == accum
        loss, ntoks = step(micro)
        results[size] = (loss.item(), ntoks.item(), adapter(model))
    assert results[2][0] == pytest.approx(results[4][0], rel=1e-5)
    assert results[2][1] == results[4][1] > 0
    close(results[2][2], results[4][2])


def test_sft_split_trims_each_micro_batch_to_its_own_width():
    from workers.mlx.sft import split

    ids = mx.zeros((4, 65), dtype=mx.int32)
    lengths = mx.array([[0, 10], [0, 20], [0, 40], [0, 64]])
    widths = [part.shape[1] for part, _ in split(ids, lengths, 2)]
    assert widths == [33, 65]
