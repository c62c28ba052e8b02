"""KTO in MLX against TRL's KTOTrainer: same tiny model folder, same LoRA weights, same batch.

TRL runs on torch (CPU, float32) with a PEFT adapter; MLX on its CPU with mlx-lm's LoRA layers
holding the very same A and B (B non-zero, so the policy differs from the reference and the
rewards and the KL term are not trivially 0). At step 0 the tokenization, the loss, kl, the
rewards and the log-probs agree; then a few plain-SGD steps on that batch lower the loss in
both, along the same curve.

With accumulation, MLX batch 2 × grad_accumulation_steps 2 against TRL per-device batch 2 ×
gradient_accumulation_steps 2 on the same four rows: TRL's KL pairs are built in chunks of
the per-device batch (its KL dataset), MLX's within each micro-batch, so both take z0 per
micro-batch; HF's Trainer divides each micro-batch's mean loss by the accumulation steps
before its backward (TRL's KTOTrainer says loss_is_scaled_for_ga False; Trainer.training_step
gives that gradient), MLX averages the micro-batch
gradients as mlx-lm does: the same update, step after step.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("trl")

import mlx.core as mx  # noqa: E402
import mlx.optimizers as mlx_optim  # noqa: E402
import numpy as np  # noqa: E402

from contract.rows import load_kto_dataset  # noqa: E402

RANK, ALPHA, BETA, MAX_LENGTH, BATCH = 4, 8, 0.1, 48, 4
LR, STEPS = 2.0, 3
TOL = 1e-4


def _batch_rows(dataset) -> list[dict]:
    """Four rows, both labels, with a prompt that has a system turn among them."""
    rows = load_kto_dataset(dataset)
    picked = [r for r in rows if r["label"]][:2] + [r for r in rows if not r["label"]][:2]
    return [picked[0], picked[2], picked[1], picked[3]]


def _trl(model_dir, rows, tmp_path, batch: int = BATCH):
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from workers.torch.kto import checkpointing

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=batch,
        max_length=MAX_LENGTH, beta=BETA, bf16=False, use_cpu=True, report_to=[],
        max_steps=1, disable_tqdm=True, **checkpointing(False),
    )  # fmt: skip
    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                               target_modules="all-linear", task_type="CAUSAL_LM"),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero B: the adapter changes the model from the start
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return trainer


def _trl_step(trainer, batch, update_with=None) -> dict[str, float]:
    trainer._metrics["train"].clear()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    if update_with is not None:
        loss.backward()
        update_with.step()
        update_with.zero_grad()
    values = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return {"loss": loss.item(), **values}


def _mlx(model_dir, trainer):
    """The MLX model with mlx-lm's LoRA layers holding the torch adapter's A and B."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, tokenizer = load(str(model_dir))
    model.freeze()
    linear_to_lora_layers(model, len(model.layers),
                          {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0})
    torch_params = dict(trainer.model.named_parameters())
    copied = 0
    for name, module in model.named_modules():
        if hasattr(module, "lora_a"):
            a = torch_params[f"base_model.model.{name}.lora_A.default.weight"]
            b = torch_params[f"base_model.model.{name}.lora_B.default.weight"]
            module.lora_a = mx.array(a.detach().numpy().T.copy())
            module.lora_b = mx.array(b.detach().numpy().T.copy())
            copied += 1
    assert copied == 7 * len(model.layers)  # q, k, v, o, gate, up, down in every block
    return model, tokenizer


@pytest.mark.slow
def test_kto_loss_and_rewards_match_trl_then_both_learn(demo, tmp_path):
    import torch

    from workers.mlx.data import tokenize_kto
    from workers.mlx.kto import KTOStep, make_batch

    rows = _batch_rows(demo["dataset"])
    trainer = _trl(demo["model"], rows, tmp_path)
    examples_trl = [trainer.train_dataset[i] for i in range(BATCH)]
    batch_trl = trainer.data_collator(examples_trl)

    model, tokenizer = _mlx(demo["model"], trainer)
    examples, dropped = tokenize_kto(rows, tokenizer, MAX_LENGTH)
    assert dropped == 0
    for ours, theirs in zip(examples, examples_trl, strict=True):  # TRL's tokenization
        assert ours["prompt_ids"] == theirs["prompt_ids"]
        assert ours["completion_ids"] == theirs["completion_ids"]
    batch = make_batch(examples, MAX_LENGTH, tokenizer.pad_token_id)
    mask = batch_trl["attention_mask"].numpy().astype(bool)
    assert mask.shape[1] <= MAX_LENGTH and not mask.all()  # truncated and padded rows
    assert (np.array(batch["input_ids"])[mask] == batch_trl["input_ids"].numpy()[mask]).all()
    np.testing.assert_array_equal(np.array(batch["completion_mask"]),
                                  batch_trl["completion_mask"].numpy())
    np.testing.assert_array_equal(np.array(batch["KL_completion_mask"]),
                                  batch_trl["KL_completion_mask"].numpy())

    torch_sgd = torch.optim.SGD([p for p in trainer.model.parameters() if p.requires_grad], lr=LR)
    mlx_step = KTOStep(model, mlx_optim.SGD(learning_rate=LR), BETA, 1.0, 1.0)
    theirs = _trl_step(trainer, batch_trl)
    ours = mlx_step(batch, update=False)
    names = ["loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins"]
    for name in names:
        assert ours[name] == pytest.approx(theirs[name], abs=TOL), (name, ours, theirs)
    for name in ("logps/chosen", "logps/rejected"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-5, abs=TOL), name
    assert theirs["kl"] > 0 and abs(theirs["rewards/margins"]) > 1e-3  # a non-trivial batch

    curve_trl = [_trl_step(trainer, batch_trl, update_with=torch_sgd)["loss"]
                 for _ in range(STEPS)]  # fmt: skip
    curve_mlx = [mlx_step(batch)["loss"] for _ in range(STEPS)]
    curve_trl.append(_trl_step(trainer, batch_trl)["loss"])
    curve_mlx.append(mlx_step(batch, update=False)["loss"])
    assert curve_trl[-1] < curve_trl[0] - 1e-3 and curve_mlx[-1] < curve_mlx[0] - 1e-3
    np.testing.assert_allclose(curve_mlx, curve_trl, atol=TOL)
    print(f"\nstep 0 TRL {theirs}\nstep 0 MLX {ours}\nloss TRL {curve_trl}\nloss MLX {curve_mlx}")


@pytest.mark.slow
def test_kto_accumulation_matches_trl_per_device_batch_times_accumulation(demo, tmp_path):
    import torch

    from workers.mlx.data import tokenize_kto
    from workers.mlx.kto import KTOStep, make_batch

    micro, accum = 2, 2
    rows = _batch_rows(demo["dataset"])
    trainer = _trl(demo["model"], rows, tmp_path, batch=micro)
    examples_trl = [trainer.train_dataset[i] for i in range(BATCH)]
    batches_trl = [trainer.data_collator(examples_trl[i : i + micro])
                   for i in range(0, BATCH, micro)]
    model, tokenizer = _mlx(demo["model"], trainer)
    examples, _ = tokenize_kto(rows, tokenizer, MAX_LENGTH)
    for ours, theirs in zip(examples, examples_trl, strict=True):  # KL pairs within 2 rows
        assert ours["completion_ids"] == theirs["completion_ids"]
    batches = [make_batch(examples[i : i + micro], MAX_LENGTH, tokenizer.pad_token_id)
               for i in range(0, BATCH, micro)]
    for ours, theirs in zip(batches, batches_trl, strict=True):
        np.testing.assert_array_equal(np.array(ours["KL_completion_mask"]),
                                      theirs["KL_completion_mask"].numpy())

    torch_sgd = torch.optim.SGD([p for p in trainer.model.parameters() if p.requires_grad], lr=LR)
    mlx_step = KTOStep(model, mlx_optim.SGD(learning_rate=LR), BETA, 1.0, 1.0)
    kls_trl = [_trl_step(trainer, b)["kl"] for b in batches_trl]
    kls_mlx = [mlx_step(b, update=False)["kl"] for b in batches]
    np.testing.assert_allclose(kls_mlx, kls_trl, atol=TOL)
    assert len({round(k, 4) for k in kls_trl}) == 2 and max(kls_trl) > 0  # z0 per micro-batch

    def trl_update() -> float:
        trainer.model.train()
        losses = []
        for b in batches_trl:
            loss = trainer.compute_loss(trainer.model, b)
            (loss / accum).backward()  # as Trainer.training_step scales an unscaled loss
            losses.append(loss.item())
        torch_sgd.step()
        torch_sgd.zero_grad()
        return float(np.mean(losses))

    curve_trl = [trl_update() for _ in range(STEPS)]
    curve_mlx = [mlx_step(batches)["loss"] for _ in range(STEPS)]
    curve_trl.append(float(np.mean([_trl_step(trainer, b)["loss"] for b in batches_trl])))
    curve_mlx.append(mlx_step(batches, update=False)["loss"])
    assert curve_trl[-1] < curve_trl[0] - 1e-3
    np.testing.assert_allclose(curve_mlx, curve_trl, atol=TOL)
    print(f"\nkl per micro-batch TRL {kls_trl} MLX {kls_mlx}\nloss TRL {curve_trl}\n"
          f"loss MLX {curve_mlx}")
