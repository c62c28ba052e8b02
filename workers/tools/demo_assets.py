"""Offline demo assets: a tiny Llama model folder and a small KTO dataset.

Everything is generated here from fixed seeds with numpy, tokenizers and safetensors only, so
the demo, the tests and a fresh install have a model and a dataset without downloading
anything. TRL (through transformers) and mlx-lm both load the model from the same folder.
Run `python -m workers.tools.demo_assets --models-dir D --datasets-dir E` to build both.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BUILD_VERSION = 1  # bump when the output changes, so existing builds are redone
SEED = 1234
MODEL_DIR_NAME = "tiny-demo"
DATASET_FILE_NAME = "demo-kto.jsonl"
MARKER_FILE = ".prospect-build-complete"
DEFAULT_ROWS = 320
VOCAB_TARGET = 768
MAX_LENGTH = 1024

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END]  # ids 0..6, in this order
ROLE_MARKERS = [SYSTEM, USER, ASSISTANT, END]

# System and user turns end with <|end|>, an assistant turn with the EOS token: generation stops
# there, and TRL/mlx-lm train the model to emit it. A prompt rendered with
# add_generation_prompt is a prefix of the rendered prompt + completion.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token }}"
    "{%- else %}{{ raise_exception('Only system, user and assistant roles are supported') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Germany", "Berlin"), ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Chile", "Santiago"),
    ("Australia", "Canberra"), ("Mexico", "Mexico City"),
]  # fmt: skip
COLOURS = [
    ("grass", "green"), ("the clear daytime sky", "blue"), ("fresh snow", "white"),
    ("a ripe banana", "yellow"), ("coal", "black"), ("a ripe tomato", "red"),
    ("a lemon", "yellow"), ("milk", "white"), ("a fire engine", "red"), ("a carrot", "orange"),
]  # fmt: skip
COLOUR_NAMES = sorted({colour for _, colour in COLOURS} | {"purple", "pink"})
CONVERSIONS = [
    ("centimetres", "metres", 100), ("minutes", "hours", 60), ("grams", "kilograms", 1000),
    ("seconds", "minutes", 60), ("millimetres", "centimetres", 10), ("hours", "days", 24),
]  # fmt: skip
OPERATIONS = [("plus", operator.add), ("minus", operator.sub), ("times", operator.mul)]
POLITE_OPENERS = ["", "Sure! ", "Of course. ", "Good question. ", "Happy to help. "]
POLITE_CLOSERS = ["", " Hope that helps!", " Let me know if you have another question."]
RUDE_REPLIES = [
    "Figure it out yourself.", "I can't be bothered to answer that.",
    "Why would I tell you? Look it up.", "That is a silly question.",
]  # fmt: skip
SYSTEM_PROMPTS = ["You are a helpful, polite assistant.", "You answer accurately and kindly."]


def _fact(rng: random.Random) -> tuple[str, str, str]:
    """One (question, correct answer, wrong answer) from a random template."""
    kind = rng.choice(["arithmetic", "capital", "colour", "conversion"])
    if kind == "arithmetic":
        name, op = rng.choice(OPERATIONS)
        a, b = rng.randint(2, 20), rng.randint(2, 12)
        right = op(a, b)
        wrong = right + rng.choice([-3, -2, -1, 1, 2, 5])
        question = f"What is {a} {name} {b}?"
        return question, f"{a} {name} {b} is {right}.", f"{a} {name} {b} is {wrong}."
    if kind == "capital":
        country, capital = rng.choice(CAPITALS)
        other = rng.choice([c for _, c in CAPITALS if c != capital])
        question = f"What is the capital of {country}?"
        return question, f"The capital of {country} is {capital}.", f"It is {other}."
    if kind == "colour":
        thing, colour = rng.choice(COLOURS)
        other = rng.choice([c for c in COLOUR_NAMES if c != colour])
        subject = thing[0].upper() + thing[1:]
        return f"What colour is {thing}?", f"{subject} is {colour}.", f"{subject} is {other}."
    small, big, factor = rng.choice(CONVERSIONS)
    n = rng.randint(2, 12)
    wrong = n * factor + rng.choice([factor, -factor, 1, 10])
    question = f"How many {small} are in {n} {big}?"
    return question, f"There are {n * factor} {small} in {n} {big}.", f"There are {wrong}."


def demo_rows(n_rows: int = DEFAULT_ROWS, seed: int = SEED) -> list[dict]:
    """KTO rows {prompt, completion, label}: about 55% desirable, a quarter conversational."""
    rng = random.Random(seed)
    n_desirable = round(n_rows * 0.55)
    labels = [True] * n_desirable + [False] * (n_rows - n_desirable)
    rng.shuffle(labels)
    conversational = set(rng.sample(range(n_rows), n_rows // 4))
    rows = []
    for i, label in enumerate(labels):
        question, right, wrong = _fact(rng)
        if label:
            answer = rng.choice(POLITE_OPENERS) + right + rng.choice(POLITE_CLOSERS)
        else:
            rude, polite = rng.choice(RUDE_REPLIES), rng.choice(POLITE_OPENERS)
            answer = rng.choice([wrong, polite + wrong, rude, f"{rude} {wrong}"])
        if i in conversational:
            prompt: list[dict] | str = [{"role": "user", "content": question}]
            if rng.random() < 0.5:
                prompt.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            completion: list[dict] | str = [{"role": "assistant", "content": answer}]
        else:
            # The completion starts with a space so that the prompt ends on a token boundary.
            prompt, completion = f"Question: {question}\nAnswer:", " " + answer
        rows.append({"prompt": prompt, "completion": completion, "label": label})
    return rows


def _training_texts(rows: list[dict]) -> list[str]:
    """The dataset's text as the chat template lays it out, markers included."""
    texts = ["\n".join(SPECIAL_TOKENS)]
    for row in rows:
        if isinstance(row["prompt"], str):
            texts.append(row["prompt"] + row["completion"])
        else:
            turns = row["prompt"] + row["completion"]
            ends = {"system": END + "\n", "user": END + "\n", "assistant": EOS}
            texts.append(BOS + "".join(f"<|{m['role']}|>\n{m['content']}{ends[m['role']]}"
                                       for m in turns))  # fmt: skip
    return texts


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_dataset(out_file: Path, n_rows: int = DEFAULT_ROWS) -> Path:
    """Write the demo KTO dataset as JSONL, atomically (temp file, then rename)."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_file.name}.", dir=out_file.parent)
    os.close(fd)
    try:
        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in demo_rows(n_rows)]
        Path(tmp).write_text("".join(lines), encoding="utf-8")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a plain data file
        os.replace(tmp, out_file)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out_file


def _train_tokenizer(rows: list[dict]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(_training_texts(rows), trainer=trainer)
    return tokenizer


def _tokenizer_files(out_dir: Path, tokenizer: Tokenizer) -> dict[str, int]:
    """Save tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    names = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    # No BOS is added on encode: the chat template writes it, as TRL and mlx-lm expect.
    _write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **names,
        "additional_special_tokens": ROLE_MARKERS, "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    })  # fmt: skip
    special_map = {**names, "additional_special_tokens": ROLE_MARKERS}
    _write_json(out_dir / "special_tokens_map.json", special_map)
    # transformers >= 4.43 saves templates as chat_template.jinja and prefers that file.
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return ids


def _model_config(vocab_size: int, ids: dict[str, int]) -> dict:
    # rope_theta stays top-level (mlx-lm reads it there; transformers 5 moves it into
    # rope_parameters itself). Both dtype spellings: transformers 4 reads torch_dtype, 5 dtype.
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab_size,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "hidden_act": "silu", "max_position_embeddings": MAX_LENGTH, "initializer_range": 0.02,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD],
        "torch_dtype": "float32", "dtype": "float32",
    }  # fmt: skip


def _weights(config: dict, seed: int = SEED) -> dict[str, np.ndarray]:
    """LlamaForCausalLM's tensors (no lm_head: tied), normal(0, 0.02), norms at 1."""
    rng = np.random.default_rng(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_out = config["num_attention_heads"] * config["head_dim"]
    kv_out = config["num_key_value_heads"] * config["head_dim"]

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0.0, config["initializer_range"], size=shape).astype(np.float32)

    tensors = {"model.embed_tokens.weight": normal(config["vocab_size"], hidden)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        tensors[p + "self_attn.q_proj.weight"] = normal(q_out, hidden)
        tensors[p + "self_attn.k_proj.weight"] = normal(kv_out, hidden)
        tensors[p + "self_attn.v_proj.weight"] = normal(kv_out, hidden)
        tensors[p + "self_attn.o_proj.weight"] = normal(hidden, q_out)
        tensors[p + "mlp.gate_proj.weight"] = normal(inter, hidden)
        tensors[p + "mlp.up_proj.weight"] = normal(inter, hidden)
        tensors[p + "mlp.down_proj.weight"] = normal(hidden, inter)
        tensors[p + "input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    tensors["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    return tensors


def _model_complete(model_dir: Path) -> bool:
    marker = model_dir / MARKER_FILE
    try:
        return json.loads(marker.read_text())["build_version"] == BUILD_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_model(out_dir: Path) -> Path:
    """Build the tiny model folder in a temp folder beside out_dir, then rename it into place."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = _train_tokenizer(demo_rows())
        ids = _tokenizer_files(tmp, tokenizer)
        config = _model_config(tokenizer.get_vocab_size(), ids)
        _write_json(tmp / "config.json", config)
        token_ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        _write_json(tmp / "generation_config.json", {**token_ids, "do_sample": False})
        save_file(_weights(config), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes owner-only files
        tmp.chmod(0o755)  # mkdtemp makes the folder private
        _write_json(tmp / MARKER_FILE, {"build_version": BUILD_VERSION})  # written last
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an interrupted or outdated build
        os.replace(tmp, out_dir)
    except OSError:
        if not _model_complete(out_dir):  # a concurrent build that finished first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def build_all(home_models_dir: Path, home_datasets_dir: Path) -> dict[str, Path]:
    """Build what is missing of `tiny-demo/` and `demo-kto.jsonl`; return their paths."""
    model_dir = Path(home_models_dir) / MODEL_DIR_NAME
    dataset_file = Path(home_datasets_dir) / DATASET_FILE_NAME
    if not dataset_file.is_file():  # written by an atomic rename: present means complete
        build_dataset(dataset_file)
    if not _model_complete(model_dir):
        build_model(model_dir)
    return {"model": model_dir, "dataset": dataset_file}


def main(argv: list[str] | None = None) -> None:
    home = Path(os.environ.get("PROSPECT_HOME", "~/.prospect")).expanduser()
    parser = argparse.ArgumentParser(description="Build the offline demo model and dataset.")
    parser.add_argument("--models-dir", type=Path, default=home / "models")
    parser.add_argument("--datasets-dir", type=Path, default=home / "datasets")
    args = parser.parse_args(argv)
    paths = build_all(args.models_dir, args.datasets_dir)
    print(json.dumps({name: str(path) for name, path in paths.items()}))


if __name__ == "__main__":
    main()
