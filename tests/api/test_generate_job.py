"""The generate job (an arena's answers), server side: create_generate_job writes the prompts
file under the home and queues a checked job; POST /api/jobs with method generate goes
through the same checks; the memory plan is the larger variant's inference estimate, and a
job that won't fit is refused naming the numbers (PROSPECT_MEMORY_BUDGET_GB caps the
budget). TestClient, no lifespan: no worker starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from app.config import get_settings
from app.errors import JobInputError
from app.jobs.generate import create_generate_job
from app.models import Job, JobStatus
from contract.job_config import parse_config, read_config_file, write_config
from tests.helpers.adapters import torch_adapter_files as torch_adapter

PROMPTS = [[{"role": "user", "content": "Name a colour."}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]]
# Qwen2-0.5B's published sizes: ~0.5 B parameters, about 2 GiB in fp32 on a CPU.
QWEN_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "vocab_size": 151936, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 256, "tie_word_embeddings": True}


def model_folder(home: Path, name: str, config: dict) -> Path:
    folder = home / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture()
def tight(monkeypatch):
    """The planner's budget capped at 0.5 GiB (a 0.5 B model in fp32 does not fit)."""
    monkeypatch.setenv("PROSPECT_MEMORY_BUDGET_GB", "0.5")
    get_settings.cache_clear()
    yield 0.5
    monkeypatch.delenv("PROSPECT_MEMORY_BUDGET_GB")
    get_settings.cache_clear()


def test_create_generate_job_writes_the_prompts_and_queues_a_checked_job(app, tmp_path):
    settings = app.state.settings
    model = model_folder(tmp_path, "tiny", TINY)
    adapter = torch_adapter(tmp_path / "runs" / "000009" / "adapter", str(model))
    with Session(app.state.engine) as s:
        job = create_generate_job(s, settings, backend="torch", model_a=str(model),
                                  adapter_a=str(adapter), model_b="", adapter_b="",
                                  prompts=PROMPTS, params={"max_tokens": 32, "seed": 7},
                                  name="arena answers")
        assert job.id and job.status == JobStatus.queued and job.method == "generate"
        assert job.run_dir == str(settings.runs_dir / f"{job.id:06d}")
        assert job.name == "arena answers" and job.total_steps == 4
        assert job.params == {"adapter_a": str(adapter), "model_b": "", "adapter_b": "",
                              "max_tokens": 32, "temperature": 0.7, "top_p": 1.0, "seed": 7}
        prompts = Path(job.dataset_path)
        assert prompts.parent == settings.home_dir / "prompts" and prompts.suffix == ".jsonl"
        lines = [json.loads(line) for line in prompts.read_text().splitlines()]
        assert lines == [{"messages": m} for m in PROMPTS]
        # The worker's config reads back as GenerateArgs.
        (tmp_path / "cfg").mkdir()
        config = write_config(tmp_path / "cfg", job_id=job.id, backend="torch",
                              method="generate", model=job.model_path,
                              dataset=job.dataset_path, params=job.params,
                              resume_from_checkpoint=None)
        parsed = parse_config(read_config_file(config), "torch")
        assert parsed.args.max_tokens == 32 and parsed.args.adapter_a == str(adapter)


def test_model_b_is_stored_as_its_folder_and_a_registered_id_resolves(app, tmp_path):
    model = model_folder(tmp_path, "tiny", TINY)
    with Session(app.state.engine) as s:
        job = create_generate_job(s, app.state.settings, backend="torch", model_a=str(model),
                                  adapter_a="", model_b="tiny-demo", adapter_b="",
                                  prompts=PROMPTS[:1], params={}, name="")
        assert job.params["model_b"] == str(tmp_path / "models" / "tiny-demo")
        assert job.name == "generate-tiny" and job.total_steps == 2


@pytest.mark.parametrize("kwargs, field, words", [
    (dict(adapter_a="relative/adapter"), "params.adapter_a", "relative path"),
    (dict(adapter_a="/etc"), "params.adapter_a", "outside the folders Prospect may read"),
    (dict(adapter_b="{home}/runs"), "params.adapter_b", "holds no adapter"),
    (dict(model_b="no-such-model"), "params.model_b", "not a registered model"),
    (dict(params={"temperature": 5}), "params.temperature", "at most 2"),
    (dict(params={"max_tokens": 0}), "params.max_tokens", "at least 1"),
    (dict(params={"beta": 0.1}), "params.beta", "unknown parameter"),
])
def test_bad_input_is_a_422_naming_the_field_and_leaves_no_prompts_file(
        app, tmp_path, kwargs, field, words):
    model = model_folder(tmp_path, "tiny", TINY)
    (tmp_path / "runs").mkdir(exist_ok=True)
    args = dict(backend="torch", model_a=str(model), adapter_a="", model_b="", adapter_b="",
                prompts=PROMPTS, params={}, name="")
    args.update({k: v.format(home=tmp_path) if isinstance(v, str) else v
                 for k, v in kwargs.items()})
    with Session(app.state.engine) as s, pytest.raises(JobInputError) as err:
        create_generate_job(s, app.state.settings, **args)
    assert err.value.field == field and words in err.value.message, err.value.message
    assert err.value.status_code == 422
    assert not list((tmp_path / "prompts").glob("*.jsonl"))
    with Session(app.state.engine) as s:
        assert not s.exec(select(Job)).all()


def test_an_adapter_trained_on_another_model_is_refused_naming_both(app, tmp_path):
    model = model_folder(tmp_path, "tiny", TINY)
    adapter = torch_adapter(tmp_path / "runs" / "000003" / "adapter", "Qwen/Qwen2-0.5B")
    with Session(app.state.engine) as s, pytest.raises(JobInputError) as err:
        create_generate_job(s, app.state.settings, backend="torch", model_a=str(model),
                            adapter_a=str(adapter), model_b="", adapter_b="",
                            prompts=PROMPTS, params={}, name="")
    assert err.value.message == (
        f"the adapter in {adapter} was trained on Qwen/Qwen2-0.5B, this job's model is "
        f"{model}: pick an adapter trained on {model}, or set model to Qwen/Qwen2-0.5B")


def test_a_generate_job_that_does_not_fit_is_refused_with_the_numbers(app, tmp_path, tight):
    small = model_folder(tmp_path, "tiny", TINY)
    big = model_folder(tmp_path, "qwen", QWEN_05B)
    with Session(app.state.engine) as s:  # the tiny model alone fits
        ok = create_generate_job(s, app.state.settings, backend="torch", model_a=str(small),
                                 adapter_a="", model_b="", adapter_b="", prompts=PROMPTS,
                                 params={}, name="")
        assert ok.status == JobStatus.queued
        with pytest.raises(JobInputError) as err:  # B is the larger model: its plan counts
            create_generate_job(s, app.state.settings, backend="torch", model_a=str(small),
                                adapter_a="", model_b=str(big), adapter_b="",
                                prompts=PROMPTS, params={"max_tokens": 64}, name="")
    e = err.value
    assert e.field == "plan" and e.status_code == 422
    assert e.message.startswith("this job won't fit in memory: needs about ")
    assert f"({big}, one model loaded at a time)" in e.message
    assert "PROSPECT_MEMORY_BUDGET_GB" in e.message or "512 MiB" in e.message, e.message
    plan = e.extra["plan"]
    assert plan["verdict"] == "won't fit" and plan["budget"]["available"] <= 0.5 * 2**30
    assert plan["estimate"]["settings"]["context_tokens"] == 1024 + 64
    assert plan["estimate"]["total_bytes"] > 2 * 2**30  # ~0.5 B parameters in fp32
    print(f"\n422: {e.message}")
    with Session(app.state.engine) as s:  # forced: queued anyway
        forced = create_generate_job(s, app.state.settings, backend="torch",
                                     model_a=str(small), adapter_a="", model_b=str(big),
                                     adapter_b="", prompts=PROMPTS, params={}, name="",
                                     force=True)
        assert forced.status == JobStatus.queued
    assert len(list((tmp_path / "prompts").glob("*.jsonl"))) == 2  # the refused one is gone


def test_post_api_jobs_with_method_generate(client, app, tmp_path, tight):
    big = model_folder(tmp_path, "qwen", QWEN_05B)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": m}) + "\n" for m in PROMPTS))
    body = {"backend": "torch", "method": "generate", "model": "tiny-demo",
            "dataset": str(prompts), "params": {"max_tokens": 16}}
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["method"] == "generate" and job["dataset"] == str(prompts)
    assert job["params"]["max_tokens"] == 16 and job["total_steps"] == 4
    r = client.post("/api/jobs", json={**body, "model": str(big)})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["field"] == "plan" and detail["plan"]["verdict"] == "won't fit"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"prompt": "x"}\n')
    r = client.post("/api/jobs", json={**body, "dataset": str(bad)})
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"].startswith('bad.jsonl line 2: no "messages" list')
    r = client.post("/api/jobs", json={**body, "dataset": ""})
    assert r.status_code == 422 and "prompts file" in r.json()["detail"][0]["msg"]


def test_the_training_path_refuses_a_generate_job_naming_where_to_start_one(app, tmp_path):
    from app.jobs.service import create_job
    from app.models import JobCreate

    data = JobCreate(backend="torch", method="generate", model="tiny-demo",
                     dataset=str(tmp_path / "p.jsonl"), params={})
    with Session(app.state.engine) as s, pytest.raises(JobInputError) as err:
        create_job(s, data, app.state.settings)
    assert err.value.field == "method" and "POST /api/arenas" in err.value.message
