"""contract/job_config.py: the one writer and the one reader of a worker's config.json."""

import json
from pathlib import Path

import pytest

from contract.events import CONFIG_FILE
from contract.job_config import KEYS, ConfigError, parse_config, read_config_file, write_config
from contract.knobs import ParamError
from contract.method_args import FuseArgs, MLXSFTArgs, TorchKTOArgs


def written(tmp_path: Path, **change) -> Path:
    fields = dict(job_id=7, backend="torch", method="kto", model="/models/tiny",
                  dataset="/data/kto.jsonl", params={"beta": 0.2, "max_steps": "5"},
                  resume_from_checkpoint=None)
    return write_config(tmp_path, **{**fields, **change})


def test_round_trip_gives_the_job_with_typed_args(tmp_path):
    path = written(tmp_path)
    assert path == tmp_path / CONFIG_FILE
    job = parse_config(read_config_file(path), "torch")
    assert (job.job_id, job.backend, job.method, job.model) == (7, "torch", "kto", "/models/tiny")
    assert job.dataset == Path("/data/kto.jsonl") and job.run_dir == tmp_path
    assert isinstance(job.args, TorchKTOArgs)
    assert job.args.beta == 0.2 and job.args.max_steps == 5  # coerced from the form's text
    assert job.args.per_device_train_batch_size == 2  # defaults filled in
    assert job.resume_from_checkpoint is None
    assert job.checkpoints_dir == tmp_path / "checkpoints"
    assert job.adapter_dir == tmp_path / "adapter"


def test_the_bytes_are_those_old_run_folders_hold(tmp_path):
    """Earlier versions wrote json.dumps(config, indent=2) with the keys in this order: a
    resumed old run reads the same file a new run does."""
    path = written(tmp_path, resume_from_checkpoint="/runs/1/checkpoints/checkpoint-3")
    old = {"job_id": 7, "backend": "torch", "method": "kto", "model": "/models/tiny",
           "dataset": "/data/kto.jsonl", "run_dir": str(tmp_path),
           "params": {"beta": 0.2, "max_steps": "5"},
           "resume_from_checkpoint": "/runs/1/checkpoints/checkpoint-3"}
    assert path.read_text() == json.dumps(old, indent=2)
    assert tuple(json.loads(path.read_text())) == KEYS


def test_an_unknown_key_is_an_error_naming_it(tmp_path):
    raw = {**read_config_file(written(tmp_path)), "learning_rat": 1e-5}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "torch")
    assert caught.value.field == "learning_rat" and "unknown config key" in caught.value.message


@pytest.mark.parametrize("change, field", [
    ({"job_id": True}, "job_id"),
    ({"dataset": "relative.jsonl"}, "dataset"),
    ({"model": "  "}, "model"),
    ({"params": []}, "params"),
    ({"method": "sft"}, "method"),  # the torch worker runs no SFT
    ({"resume_from_checkpoint": "/nowhere/checkpoint-1"}, "resume_from_checkpoint"),
])
def test_a_wrong_value_names_its_key(tmp_path, change, field):
    raw = {**read_config_file(written(tmp_path)), **change}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "torch")
    assert caught.value.field == field


def test_a_missing_key_and_an_unknown_knob(tmp_path):
    raw = read_config_file(written(tmp_path))
    with pytest.raises(ConfigError, match="missing"):
        parse_config({k: v for k, v in raw.items() if k != "params"}, "torch")
    with pytest.raises(ParamError) as caught:
        parse_config({**raw, "params": {"batch": 4}}, "torch")
    assert caught.value.field == "batch"


def test_each_backend_reads_its_own_methods_and_checkpoints(tmp_path):
    ckpt = tmp_path / "checkpoints" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    raw = read_config_file(written(tmp_path, backend="mlx", method="sft", params={"iters": 3},
                                   resume_from_checkpoint=str(ckpt)))
    has_state = lambda path: (path / "state.json").is_file()  # noqa: E731 - the MLX rule
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        parse_config(raw, "mlx", has_state)
    (ckpt / "state.json").write_text("{}")
    job = parse_config(raw, "mlx", has_state)
    assert isinstance(job.args, MLXSFTArgs) and job.args.iters == 3
    assert job.resume_from_checkpoint == ckpt


def test_a_fuse_job_needs_no_dataset(tmp_path):
    raw = read_config_file(written(tmp_path, method="fuse", dataset="",
                                   params={"adapter_path": "/runs/1/adapter"}))
    job = parse_config(raw, "torch")
    assert job.args == FuseArgs(adapter_path="/runs/1/adapter", name="")


@pytest.mark.parametrize("content, words", [
    (None, "no config file"), ("{not json", "cannot read"), ("[1, 2]", "JSON object"),
])
def test_an_unreadable_file_is_a_config_error(tmp_path, content, words):
    path = tmp_path / CONFIG_FILE
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=words) as caught:
        read_config_file(path)
    assert caught.value.field == "config"
