"""workers/mlx/convert.py without mlx: where the model goes (a plain name under
<home>/models), which dtype auto picks, and how mlx-lm's [INFO] lines and the quant predicate's
calls become status and progress events (a real EventWriter, read back)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from contract.events import EventWriter, read_events
from contract.knobs import ParamError
from workers.mlx.convert import Phases, model_dtype, output_dir


def test_the_output_is_a_plain_name_under_home_models(tmp_path):
    assert output_dir(tmp_path / "runs" / "000007", "qwen-4bit") == \
        tmp_path.resolve() / "models" / "qwen-4bit"
    for bad in ("../x", "a/b", "", ".", "..", "-x", "x" * 201):
        with pytest.raises(ParamError) as err:
            output_dir(tmp_path / "runs" / "000007", bad)
        assert err.value.field == "name"


def test_auto_keeps_the_models_own_dtype(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert model_dtype(tmp_path, "auto") == "bfloat16"
    assert model_dtype(tmp_path, "float32") == "float32"
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"dtype": "float16"}}))
    assert model_dtype(tmp_path, "auto") == "float16"
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "int8"}))
    assert model_dtype(tmp_path, "auto") is None  # mlx-lm leaves the weights as stored
    assert model_dtype(tmp_path / "missing", "auto") is None


def events(path: Path) -> list[tuple]:
    parsed, _ = read_events(path, 0)
    return [(e.type, e.data.get("phase") or e.data.get("step") or e.data.get("message"))
            for e in parsed]


def test_quantizing_reports_a_step_per_block(tmp_path, capsys):
    writer = EventWriter(tmp_path / "events.jsonl")
    phases = Phases(writer, sys.stdout, layers=3, quantize=True)
    phases.write("[INFO] Loading\n[INFO] Using dtype: bfloat16\n[INFO] Quant")
    phases.write("izing\n")
    for block in range(3):
        for part in ("self_attn.q_proj", "mlp.down_proj"):
            assert phases.layer(f"model.layers.{block}.{part}", None) is True
    phases.layer("lm_head", None)
    phases.write("[INFO] Quantized model with 4.501 bits per weight.\n")
    phases.progress(phases.total)
    writer.close()
    assert events(tmp_path / "events.jsonl") == [
        ("log", "Using dtype: bfloat16"), ("progress", 1), ("status", "quantizing"),
        ("progress", 2), ("progress", 3), ("log", "Quantized model with 4.501 bits per weight."),
        ("progress", 4), ("status", "saving"), ("progress", 5)]
    assert phases.total == 5 and phases.bits_per_weight == 4.501
    assert "[INFO] Quantizing" in capsys.readouterr().out  # worker.log keeps mlx-lm's lines


def test_unquantized_goes_from_loading_to_saving(tmp_path):
    writer = EventWriter(tmp_path / "events.jsonl")
    phases = Phases(writer, io.StringIO(), layers=24, quantize=False)
    phases.write("[INFO] Loading\n[INFO] Using dtype: float16\n")
    phases.progress(phases.total)
    writer.close()
    assert events(tmp_path / "events.jsonl") == [
        ("log", "Using dtype: float16"), ("progress", 1), ("status", "saving"),
        ("progress", 2)]
