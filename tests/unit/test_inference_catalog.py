"""Model ids and the backend choice (app/inference/catalog.py), over an in-memory home."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, SQLModel, create_engine

from app.config import Settings
from app.inference.catalog import choose_backend, list_models, parse_id, resolve
from app.inference.errors import InferenceError
from app.models import Job, JobStatus, ModelEntry

MAC = {"apple_silicon": True, "mlx": True, "torch": True}
LINUX = {"apple_silicon": False, "mlx": True, "torch": True}


@pytest.mark.parametrize("requested, loaded, facts, chosen", [
    ("torch", ["mlx"], MAC, "torch"),      # the request's wins
    (None, ["torch"], MAC, "torch"),        # else a worker that has it loaded
    (None, [], MAC, "mlx"),                 # else MLX on Apple silicon
    (None, [], {**MAC, "mlx": False}, "torch"),  # ... when mlx-lm is installed
    (None, [], LINUX, "torch"),             # torch elsewhere, mlx or not
])
def test_choose_backend(requested, loaded, facts, chosen):
    assert choose_backend(requested, loaded, facts) == chosen


@pytest.mark.parametrize("model_id, parsed", [
    ("tiny-demo", ("tiny-demo", None)), ("tiny-demo@job-12", ("tiny-demo", 12)),
    ("Qwen/Qwen2-0.5B@job-3", ("Qwen/Qwen2-0.5B", 3)), ("/m/x@job-1", ("/m/x", 1)),
    ("a@job-", ("a@job-", None)), ("a@job-x", ("a@job-x", None)), ("@job-1", ("@job-1", None)),
])
def test_parse_id(model_id, parsed):
    assert parse_id(model_id) == parsed


@pytest.fixture()
def home(tmp_path):
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    settings = Settings(home=tmp_path)
    for name in ("tiny-demo", "other", "fused-one"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({}))
    with Session(engine) as s:
        s.add(ModelEntry(id="tiny-demo", path=str(tmp_path / "tiny-demo"), source="demo"))
        s.add(ModelEntry(id="fused-one", path=str(tmp_path / "fused-one"), source="fused"))
        for i, (backend, model, status) in enumerate([
                ("torch", "tiny-demo", JobStatus.succeeded),
                ("mlx", "tiny-demo", JobStatus.succeeded),
                ("torch", str(tmp_path / "other"), JobStatus.cancelled),
                ("torch", "tiny-demo", JobStatus.failed)], start=1):
            adapter = tmp_path / "runs" / str(i) / "adapter"
            if i != 4:  # job 4 never saved its adapter
                adapter.mkdir(parents=True)
            path = str(tmp_path / "tiny-demo") if model == "tiny-demo" else model
            s.add(Job(id=i, name=f"run {i}", backend=backend, method="kto", model=model,
                      dataset="d", status=status, model_path=path,
                      adapter_path=str(adapter)))
        s.commit()
    with Session(engine) as s:
        yield s, settings, tmp_path


def test_list_models(home):
    session, _, tmp = home
    models = list_models(session, {str(tmp / "tiny-demo"): ["mlx"]})
    ids = [m["id"] for m in models]
    other = str(tmp / "other")
    assert ids == [f"{other}@job-3", "tiny-demo@job-2", "tiny-demo@job-1", "tiny-demo",
                   "fused-one", other]
    by_id = {m["id"]: m["prospect"] for m in models}
    assert by_id["tiny-demo@job-2"] == {"kind": "adapter", "base": "tiny-demo",
                                        "backend": "mlx", "job_id": 2, "name": "run 2",
                                        "loaded": True}
    assert by_id["tiny-demo@job-1"]["loaded"] is False  # torch's worker is not loaded
    assert by_id["tiny-demo"]["backend"] == "mlx" and by_id["tiny-demo"]["loaded"]
    assert by_id["fused-one"]["kind"] == "fused" and by_id[other]["kind"] == "base"


def test_resolve_base_and_adapter(home):
    session, settings, tmp = home
    t = resolve(session, settings, "tiny-demo", facts=LINUX)
    assert (t.kind, t.backend, t.adapter, t.model_path) == ("base", "torch", None,
                                                            str(tmp / "tiny-demo"))
    t = resolve(session, settings, "tiny-demo", loaded={str(tmp / "tiny-demo"): ["mlx"]},
                facts=LINUX)
    assert t.backend == "mlx"
    t = resolve(session, settings, "tiny-demo@job-2", facts=LINUX)
    assert (t.kind, t.backend, t.job_id, t.base) == ("adapter", "mlx", 2, "tiny-demo")
    assert t.adapter == str(tmp / "runs" / "2" / "adapter")
    assert resolve(session, settings, "fused-one", facts=LINUX).kind == "fused"
    assert resolve(session, settings, str(tmp / "other"), facts=LINUX).model_path == \
        str(tmp / "other")


@pytest.mark.parametrize("model_id, backend, status, words", [
    ("nope", None, 404, ["unknown model 'nope'", "Models here:", "tiny-demo@job-1"]),
    ("tiny-demo@job-99", None, 404, ["there is no job 99"]),
    ("tiny-demo@job-4", None, 404, ["job 4 (failed) has no adapter on disk"]),
    ("other@job-1", None, 422, ["job 1's adapter was trained on tiny-demo, not other; use "
                                "tiny-demo@job-1"]),
    ("tiny-demo@job-1", "mlx", 422, ["trained with the torch backend"]),
])
def test_resolve_errors(home, model_id, backend, status, words):
    session, settings, _ = home
    with pytest.raises(InferenceError) as caught:
        resolve(session, settings, model_id, backend, facts=LINUX)
    assert caught.value.status == status
    for w in words:
        assert w in caught.value.message


def test_a_backend_that_is_not_installed_is_422(home):
    session, settings, _ = home
    with pytest.raises(InferenceError) as caught:
        resolve(session, settings, "tiny-demo", "mlx", facts={**LINUX, "mlx": False})
    assert caught.value.status == 422 and "pip install" in caught.value.message
    assert caught.value.param == "backend"
