"""QLoRA: both MLX methods train a LoRA adapter on a 4-bit model that mlx-lm quantized
(the seed guide's `mlx_lm.convert -q` path), and the adapter loads back onto that model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlx_lm")

from contract.events import LOG_FILE  # noqa: E402
from tests.helpers.workers import KTO_FAST, SFT_FAST, of_type  # noqa: E402
from tests.helpers.workers import run_mlx as run  # noqa: E402
from tests.helpers.workers import write_mlx_config as write_config  # noqa: E402


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, demo):
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("qdemo") / "tiny-demo-4bit"
    convert(str(demo["model"]), mlx_path=str(out), quantize=True, q_bits=4, q_group_size=32)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    return {**demo, "model": out}


@pytest.mark.slow
@pytest.mark.parametrize(("method", "params"), [("sft", SFT_FAST), ("kto", KTO_FAST)])
def test_lora_trains_on_a_4bit_model_and_loads_back(tmp_path, quantized, method, params):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    write_config(tmp_path, quantized, method, {**params, "steps_per_save": 1000})
    rc, events = run(tmp_path)
    assert rc == 0, (tmp_path / LOG_FILE).read_text()[-3000:]
    assert events[-1].data["status"] == "succeeded"
    losses = [m["values"]["loss"] for m in of_type(events, "metric") if "loss" in m["values"]]
    assert losses and all(v == v and abs(v) < 1e4 for v in losses)  # finite

    model, _ = load(str(quantized["model"]), adapter_path=str(tmp_path / "adapter"))
    q_proj = model.layers[-1].self_attn.q_proj
    assert isinstance(q_proj.linear, nn.QuantizedLinear)  # LoRA over the 4-bit weights
    assert mx.abs(q_proj.lora_b).max().item() > 0  # the trained adapter came back
