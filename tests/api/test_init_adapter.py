"""init_adapter and eval_fraction checked when a KTO job is submitted (app/jobs/service.py):
a job id or an adapter folder becomes the absolute folder the worker loads, or a 422 that
names the problem and the fix (another backend's adapter, another base model, no adapter,
a path outside the allowed folders); a held-out split with fewer than 2 rows on a side is
refused naming the numbers. Adapters here are adapter-shaped folders (a config and a
weights file) beside finished jobs' rows. TestClient, no lifespan: no worker starts."""

from __future__ import annotations

import json
import re

import pytest
from sqlmodel import Session

from app.models import DatasetEntry, Job, JobStatus, ModelEntry
from tests.helpers.adapters import mlx_adapter_files as mlx_adapter
from tests.helpers.adapters import torch_adapter_files as torch_adapter
from tests.helpers.pages import controls, form_data


def finished(app, **fields) -> int:
    with Session(app.state.engine) as s:
        job = Job(**{"name": "done", "backend": "torch", "method": "kto", "model": "tiny-demo",
                     "dataset": "demo-kto", "params": {}, "status": JobStatus.succeeded,
                     **fields})
        s.add(job)
        s.commit()
        return job.id


@pytest.fixture()
def jobs(app, tmp_path):
    """Finished jobs: torch and MLX on tiny-demo, torch on another model, a failed one, a
    fuse; and the folders they name."""
    demo = str(tmp_path / "models" / "tiny-demo")
    other = tmp_path / "models" / "other"
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    with Session(app.state.engine) as s:
        s.add(ModelEntry(id="other", path=str(other), source="test"))
        s.commit()
    runs = tmp_path / "runs"
    t = torch_adapter(runs / "000001" / "adapter", demo)
    m = mlx_adapter(runs / "000002" / "adapter", demo)
    o = torch_adapter(runs / "000003" / "adapter", str(other))
    return {
        "torch": finished(app, adapter_path=str(t), model_path=demo),
        "mlx": finished(app, backend="mlx", adapter_path=str(m), model_path=demo),
        "other": finished(app, model="other", adapter_path=str(o), model_path=str(other)),
        "failed": finished(app, status=JobStatus.failed, model_path=demo),
        "cancelled": finished(app, status=JobStatus.cancelled, adapter_path=str(t),
                              model_path=demo),
        "fuse": finished(app, method="fuse", model_path=demo),
        "paths": {"torch": t, "mlx": m, "other": o, "demo": demo, "other_model": str(other)},
    }


def post(client, value, backend="torch", **params):
    return client.post("/api/jobs", json={
        "backend": backend, "method": "kto", "model": "tiny-demo", "dataset": "demo-kto",
        "params": {"init_adapter": value, **params}})


def refused(r, field="params.init_adapter") -> str:
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["field"] == field, detail
    return detail["msg"]


def test_empty_is_a_fresh_lora(client, jobs):
    r = post(client, "")
    assert r.status_code == 201, r.text
    assert r.json()["params"]["init_adapter"] == ""
    assert post(client, None).json()["params"]["init_adapter"] == ""


@pytest.mark.parametrize("form", ["{id}", "job-{id}", "job {id}", "JOB-{id}", " {id} "])
def test_a_job_id_becomes_its_adapter_folder(client, jobs, form):
    r = post(client, form.format(id=jobs["torch"]))
    assert r.status_code == 201, r.text
    assert r.json()["params"]["init_adapter"] == str(jobs["paths"]["torch"])


def test_a_cancelled_job_with_an_adapter_and_an_mlx_job_for_mlx(client, jobs):
    r = post(client, str(jobs["cancelled"]))
    assert r.status_code == 201 and r.json()["params"]["init_adapter"] == \
        str(jobs["paths"]["torch"])
    r = post(client, f"job-{jobs['mlx']}", backend="mlx")
    assert r.status_code == 201, r.text
    assert r.json()["params"]["init_adapter"] == str(jobs["paths"]["mlx"])


def test_job_ids_that_cannot_give_an_adapter(client, jobs):
    assert refused(post(client, "9999")) == (
        "there is no job 9999; give the id of a KTO or SFT job that saved an adapter, or an "
        "adapter folder")
    assert refused(post(client, str(jobs["fuse"]))) == (
        f"job {jobs['fuse']} is a fuse job: it trained no adapter. Give a KTO or SFT job's id")
    assert refused(post(client, str(jobs["failed"]))) == (
        f"job {jobs['failed']} is failed and has no adapter to start from; pick a job that "
        "succeeded (or was cancelled after saving one)")


def test_another_backend_s_adapter_names_both(client, jobs):
    assert refused(post(client, str(jobs["mlx"]))) == (
        f"job {jobs['mlx']}'s adapter is an MLX adapter; this job runs on torch, which loads "
        "a torch (PEFT) adapter: pick a torch job, or set backend to mlx")
    msg = refused(post(client, str(jobs["paths"]["mlx"])))
    assert msg == (f"{jobs['paths']['mlx']} holds an MLX adapter; this job runs on torch, "
                   "which loads a torch (PEFT) adapter: pick one trained with torch, or set "
                   "backend to mlx")


def test_another_base_model_names_both_and_the_fix(client, jobs):
    assert refused(post(client, str(jobs["other"]))) == (
        f"job {jobs['other']}'s adapter was trained on other, this job's model is tiny-demo: "
        "pick a job trained on tiny-demo, or set model to other")
    folder, base = jobs["paths"]["other"], jobs["paths"]["other_model"]
    assert refused(post(client, str(folder))) == (
        f"the adapter in {folder} was trained on {base}, this job's model is tiny-demo: pick "
        f"an adapter trained on tiny-demo, or set model to {base}")


def test_an_adapter_folder_of_this_base_is_stored_resolved(client, jobs, tmp_path):
    link = tmp_path / "my-adapter"
    link.symlink_to(jobs["paths"]["torch"])
    r = post(client, str(link))
    assert r.status_code == 201, r.text
    assert r.json()["params"]["init_adapter"] == str(jobs["paths"]["torch"])
    # An adapter whose config names no base model is taken on trust.
    bare = torch_adapter(tmp_path / "bare", "")
    assert post(client, str(bare) + "/").json()["params"]["init_adapter"] == str(bare)


@pytest.mark.parametrize("value, words", [
    ("/etc", "is outside the folders Prospect may read"),
    ("adapter", "is a relative path; give an absolute path"),
    ("{home}/nowhere", "is not a folder; give an adapter folder"),
    ("{home}/models", "holds no adapter: a torch adapter has adapter_config.json and "
                      "adapter_model.safetensors, an MLX one adapters.safetensors and "
                      "adapter_config.json"),
])
def test_folders_that_are_not_an_adapter_here(client, jobs, tmp_path, value, words):
    assert words in refused(post(client, value.format(home=tmp_path)))


def test_only_kto_takes_it(client, jobs):
    r = client.post("/api/jobs", json={
        "backend": "mlx", "method": "sft", "model": "tiny-demo", "dataset": "demo-kto",
        "params": {"init_adapter": str(jobs["torch"])}})
    assert r.status_code == 422
    assert "unknown parameter for mlx sft" in r.json()["detail"][0]["msg"]


def test_the_form_shows_the_refusal_beside_the_knob(client, jobs):
    r = client.post("/jobs/new", data=form_data(init_adapter=str(jobs["mlx"])),
                    follow_redirects=False)
    assert r.status_code == 422, r.status_code
    assert f"job {jobs['mlx']}&#39;s adapter is an MLX adapter" in r.text
    r = client.post("/jobs/new", data=form_data(init_adapter=f"job-{jobs['torch']}"),
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    with Session(client.app.state.engine) as s:
        job = s.get(Job, int(r.headers["location"].rsplit("/", 1)[1]))
        assert job.params["init_adapter"] == str(jobs["paths"]["torch"])


def test_eval_fraction_that_leaves_a_side_short_is_refused_with_the_numbers(app, client,
                                                                            tmp_path):
    rows = [{"prompt": "q", "completion": "a", "label": True}] * 2 + \
        [{"prompt": "q", "completion": "b", "label": False}]
    path = tmp_path / "datasets" / "three.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Session(app.state.engine) as s:
        s.add(DatasetEntry(id="three", path=str(path), rows=3))
        s.commit()
    body = {"backend": "torch", "method": "kto", "model": "tiny-demo", "dataset": "three",
            "params": {"eval_fraction": 0.2}}
    msg = refused(client.post("/api/jobs", json=body), "params.eval_fraction")
    assert msg == ("eval_fraction 0.2 of 3 rows holds out 1 and trains on 2: KTO needs at "
                   "least 2 on each side. Raise eval_fraction, add rows, or set eval_fraction "
                   "to 0")
    # The demo's 8 rows (4 and 4): 0.25 holds out 2 and trains on 6.
    r = client.post("/api/jobs", json={**body, "dataset": "demo-kto"})
    assert r.status_code == 201, r.text
    assert r.json()["params"]["eval_fraction"] == 0.2
    r = client.post("/api/jobs", json={**body, "dataset": "demo-kto",
                                       "params": {"eval_fraction": 0.5}})
    assert r.status_code == 201, r.text


def test_the_form_is_prefilled_from_the_query(client, jobs):
    """"Train on feedback": /jobs/new?dataset=…&model=…&init_adapter=…&…_weight=…"""
    r = client.get(f"/jobs/new?dataset=demo-kto&model=tiny-demo&init_adapter=job-"
                   f"{jobs['torch']}&desirable_weight=1.25&undesirable_weight=0.8&beta=0.2")
    assert r.status_code == 200
    c = controls(r.text)
    assert c["method"]["value"] == "torch/kto"
    assert c["model_choice"]["value"] == "tiny-demo"
    assert c["dataset_choice"]["value"] == "demo-kto"
    assert c["params.init_adapter"]["value"] == f"job-{jobs['torch']}"
    assert c["params.desirable_weight"]["value"] == "1.25"
    assert c["params.undesirable_weight"]["value"] == "0.8"
    assert c["params.beta"]["value"] == "0.2"
    assert c["params.learning_rate"]["value"] == "0.001"  # the demo model's defaults stay
    # MLX KTO, a knob it lacks is ignored; the posted form starts the job as prefilled.
    r = client.get(f"/jobs/new?backend=mlx&init_adapter={jobs['paths']['mlx']}&r=4")
    c = controls(r.text)
    assert c["method"]["value"] == "mlx/kto" and "params.r" not in c
    assert c["params.init_adapter"]["value"] == str(jobs["paths"]["mlx"])


def test_the_method_picker_offers_no_fuse_or_generate(client):
    options = re.findall(r'<option value="(\w+/\w+)"', client.get("/jobs/new").text)
    assert set(options) == {"torch/kto", "mlx/sft", "mlx/kto"}, options


def test_a_generate_job_is_not_cloned_into_the_form(app, client, jobs):
    gen = finished(app, method="generate", dataset="/x/p.jsonl", params={"max_tokens": 8})
    c = controls(client.get(f"/jobs/new?from={gen}").text)
    assert c["method"]["value"] == "torch/kto" and "params.max_tokens" not in c
