"""The offline demo model and dataset load in transformers, mlx-lm and TRL's KTOTrainer."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.tools import demo_assets

REPO_ROOT = Path(__file__).resolve().parents[2]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful, polite assistant."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "2 plus 3 is 5."},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo-home")
    return demo_assets.build_all(root / "models", root / "datasets")


@pytest.fixture(scope="module")
def model_dir(built) -> Path:
    return built["model"]


@pytest.fixture(scope="module")
def config(model_dir) -> dict:
    return json.loads((model_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def rows(built) -> list[dict]:
    return [json.loads(line) for line in built["dataset"].read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(model_dir)


def test_model_folder_has_the_expected_files(model_dir, config):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
            demo_assets.MARKER_FILE} <= names  # fmt: skip
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 10000.0
    assert 512 <= config["vocab_size"] <= 1024
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == (model_dir / "chat_template.jinja").read_text()


def test_build_imports_no_heavy_library():
    code = (
        "import sys, workers.tools.demo_assets; "
        "heavy = {'torch', 'transformers', 'mlx', 'mlx_lm', 'trl', 'app'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_tokenizer_ids_match_config(tokenizer, config, model_dir):
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        demo_assets.BOS, demo_assets.EOS, demo_assets.PAD)  # fmt: skip
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        assert token_id == config[f"{name}_token_id"] == generation[f"{name}_token_id"]
    assert len(tokenizer) == config["vocab_size"]
    for marker in demo_assets.ROLE_MARKERS:  # each marker is one token, never split
        assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_ends_assistant_turn_with_eos(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text.startswith(demo_assets.BOS) and text.endswith("2 plus 3 is 5." + demo_assets.EOS)
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    prompt = tokenizer.apply_chat_template(
        CONVERSATION[:2], tokenize=True, return_dict=True, add_generation_prompt=True
    )["input_ids"]
    assert ids[: len(prompt)] == prompt  # TRL and mlx-lm split prompt/completion this way
    assert tokenizer.decode(ids, skip_special_tokens=True).strip().endswith("2 plus 3 is 5.")


def test_transformers_loads_without_missing_weights(model_dir, tokenizer, config, caplog):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            model, info = transformers.AutoModelForCausalLM.from_pretrained(
                model_dir, output_loading_info=True
            )
    finally:
        transformers.logging.disable_propagation()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    assert "newly initialized" not in caplog.text and "MISSING" not in caplog.text
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), config["vocab_size"])
    assert torch.isfinite(logits).all()


def test_mlx_lm_loads_and_generates(model_dir):
    mlx_lm = pytest.importorskip("mlx_lm")
    model, tokenizer = mlx_lm.load(str(model_dir))
    assert tokenizer.eos_token_id == json.loads((model_dir / "config.json").read_text())[
        "eos_token_id"]  # fmt: skip
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True)
    responses = list(mlx_lm.stream_generate(model, tokenizer, prompt=prompt, max_tokens=4))
    assert 1 <= responses[-1].generation_tokens <= 4
    assert isinstance(mlx_lm.generate(model, tokenizer, prompt=prompt, max_tokens=4), str)


def test_dataset_rows(rows):
    assert len(rows) == demo_assets.DEFAULT_ROWS
    desirable = sum(row["label"] for row in rows)
    undesirable = len(rows) - desirable
    assert 0.5 <= desirable / len(rows) <= 0.6
    assert 1 <= desirable / undesirable <= 4 / 3  # KTO's recommended balance with weights 1
    conversational = [row for row in rows if isinstance(row["prompt"], list)]
    assert 0.2 <= len(conversational) / len(rows) <= 0.3
    assert any(row["prompt"][0]["role"] == "system" for row in conversational)
    for row in rows:
        assert set(row) == {"prompt", "completion", "label"}
        assert isinstance(row["label"], bool)
        if isinstance(row["prompt"], str):
            assert row["prompt"].strip() and isinstance(row["completion"], str)
            assert row["completion"].startswith(" ") and row["completion"].strip()
        else:
            roles = [message["role"] for message in row["prompt"]]
            assert roles in (["user"], ["system", "user"])
            assert [m["role"] for m in row["completion"]] == ["assistant"]
            assert all(m["content"].strip() for m in row["prompt"] + row["completion"])


def test_build_is_deterministic(built, tmp_path):
    other = demo_assets.build_dataset(tmp_path / "again.jsonl")
    assert other.read_bytes() == built["dataset"].read_bytes()
    again = demo_assets.build_model(tmp_path / "model")
    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        assert (again / name).read_bytes() == (built["model"] / name).read_bytes()


def test_build_all_is_idempotent(built):
    weights = built["model"] / "model.safetensors"
    before = weights.stat().st_mtime_ns, built["dataset"].stat().st_mtime_ns
    started = time.perf_counter()
    again = demo_assets.build_all(built["model"].parent, built["dataset"].parent)
    assert time.perf_counter() - started < 0.1
    assert again == built
    assert (weights.stat().st_mtime_ns, built["dataset"].stat().st_mtime_ns) == before


def test_interrupted_build_is_redone(tmp_path):
    paths = demo_assets.build_all(tmp_path / "models", tmp_path / "datasets")
    (paths["model"] / demo_assets.MARKER_FILE).unlink()  # as if killed before the marker
    (paths["model"] / "model.safetensors").write_bytes(b"truncated")
    demo_assets.build_all(tmp_path / "models", tmp_path / "datasets")
    assert (paths["model"] / demo_assets.MARKER_FILE).exists()
    assert (paths["model"] / "model.safetensors").stat().st_size > 100_000
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny-demo"]  # no temp left


def test_cli_prints_paths(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "workers.tools.demo_assets", "--models-dir", str(tmp_path / "m"),
         "--datasets-dir", str(tmp_path / "d")],
        cwd=REPO_ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "model": str(tmp_path / "m" / "tiny-demo"),
        "dataset": str(tmp_path / "d" / "demo-kto.jsonl"),
    }


def _conversational(row: dict) -> dict:
    """One datasets.Dataset cannot mix string and message-list columns: make every row chat."""
    if isinstance(row["prompt"], list):
        return row
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "completion": [{"role": "assistant", "content": row["completion"].strip()}],
        "label": row["label"],
    }


def test_trl_kto_trains_two_steps_on_cpu(model_dir, rows, tmp_path):
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from trl import KTOConfig, KTOTrainer

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    dataset = datasets.Dataset.from_list([_conversational(row) for row in rows[:64]])
    args = KTOConfig(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=2,
        bf16=False, use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
        learning_rate=1e-3, max_length=128, activation_checkpointing=False,
    )  # fmt: skip
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                           task_type="CAUSAL_LM")  # fmt: skip
    trainer = KTOTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora)  # fmt: skip
    result = trainer.train()
    assert trainer.state.global_step == 2
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert math.isfinite(result.training_loss)
