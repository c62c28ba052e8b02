"""hypothesis fuzz: the dataset reader and the job config raise only their validation errors.

Whatever a file or a script sends, the person gets DatasetError / ParamError / JobInputError
(a 422 naming the row or field), never another exception (a 500, or a worker crash).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from app.config import Settings
from app.db import make_engine, migrate
from app.errors import JobInputError
from app.jobs.service import validate_job
from app.models import DatasetEntry, JobCreate, ModelEntry
from contract.knobs import METHODS, ParamError
from contract.rows import DatasetError, kto_stats, load_kto_dataset, normalize_row

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
KEYS = ["prompt", "completion", "label", "chosen", "rejected", "role", "content", "messages"]
ROLES = ["system", "user", "assistant", "tool", "bot"]

# The classes that once gave 500s: lone surrogates and NULs in text, over-long file names,
# integers of hundreds of digits (f"{10**400:g}" raises OverflowError).
hostile = st.sampled_from(["\ud800", "x\udfff", "\x00", "/" + "a" * 256, "~/" + "é" * 128,
                           "/" + "b/" * 2100])
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.integers(-(10**400), 10**400) | st.sampled_from([10**309, -(10**4000)])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(ROLES + ["", " "]) | hostile)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES) | scalars, "content": st.text(max_size=10) | scalars}),
    max_size=3)
# Rows that look nearly right, so the fuzz reaches past the first check.
rows = st.fixed_dictionaries({}, optional={
    "prompt": st.text(max_size=10) | messages | json_values,
    "completion": st.text(max_size=10) | messages | json_values,
    "label": st.booleans() | st.integers(-2, 3) | json_values,
    "chosen": st.text(max_size=10) | messages | json_values,
    "rejected": st.text(max_size=10) | messages | json_values,
}) | json_values


def read(tmp_path: Path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    try:
        rows = load_kto_dataset(path)
    except DatasetError as exc:
        assert str(exc)  # a message to show
        return None
    assert rows and all(set(r) == {"prompt", "completion", "label"} for r in rows)
    kto_stats(rows)
    return rows


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json"]))
def test_arbitrary_bytes_raise_only_dataset_errors(tmp_path, data, suffix):
    read(tmp_path, "d" + suffix, data)


@FUZZ
@given(items=st.lists(rows, max_size=6), as_list=st.booleans(),
       junk=st.sampled_from(["", "\n", "\n\n  \n", "\ufeff", "\u2028"]))
def test_arbitrary_json_rows_raise_only_dataset_errors(tmp_path, items, as_list, junk):
    text = json.dumps(items) if as_list else junk.join(json.dumps(i) for i in items)
    read(tmp_path, "d.jsonl", text.encode("utf-8", errors="surrogatepass"))


@FUZZ
@given(raw=rows, number=st.integers(1, 10**6))
def test_one_row_normalizes_or_names_its_row(raw, number):
    try:
        out = normalize_row(raw, number)
    except DatasetError as exc:
        assert exc.row == number
        return
    assert out and all(isinstance(r["label"], bool) for r in out)


def test_deeply_nested_json_is_a_dataset_error(tmp_path):
    read(tmp_path, "deep.json", b"[" * 100_000 + b"]" * 100_000)
    read(tmp_path, "deep.jsonl", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


# --- the job config ---------------------------------------------------------------------------
knob_names = st.sampled_from(sorted({k.name for m in METHODS.values() for k in m.knobs}))
knob_values = (scalars | st.lists(st.text(string.ascii_letters + "_,", max_size=8), max_size=3)
               | st.text(string.digits + ".e-+ infINFnaN", max_size=8) | json_values)
params = st.dictionaries(knob_names | st.text(max_size=6), knob_values, max_size=6) \
    | json_values


@FUZZ
@given(method=st.sampled_from(list(METHODS.values())), p=params)
def test_method_params_raise_only_param_errors(method, p):
    errors = method.errors(p)
    assert all(isinstance(e, ParamError) and e.message for e in errors)
    try:
        full = method.validate(p)
    except ParamError:
        assert errors
        return
    assert not errors and set(full) == {k.name for k in method.knobs}
    json.dumps(full, allow_nan=False)  # what the worker's config.json gets is plain JSON


@pytest.mark.parametrize("p", [{"max_steps": float("inf")}, {"learning_rate": 10**400},
                               {"max_steps": 10**309}, {"seed": -(10**4000)},
                               {"max_steps": "9" * 5000}, {"target_modules": ["\ud800"]},
                               {"device": "cpu\x00"}])
def test_numbers_beyond_range_are_param_errors(p):
    assert METHODS[("torch", "kto")].errors(p)


@pytest.fixture(scope="module")
def job_world(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    settings_ = Settings(home=home)
    settings_.ensure_dirs()
    engine = make_engine(settings_.db_path)
    migrate(engine)
    model = home / "models" / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = home / "datasets" / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": "a", "label": i % 2})
                            + "\n" for i in range(4)))
    with Session(engine) as s:
        s.add(ModelEntry(id="m", path=str(model), source="test"))
        s.add(DatasetEntry(id="d", path=str(data), rows=4))
        s.commit()
    return settings_, engine, str(model), str(data)


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=12) | hostile,
    "backend": st.sampled_from(["torch", "mlx", "jax"]) | scalars,
    "method": st.sampled_from(["kto", "sft", "dpo"]) | scalars,
    "model": st.sampled_from(["m", "{model}", "Qwen/Qwen2-0.5B", "/", "~", ".", "../m"])
    | st.text(max_size=12) | hostile,
    "dataset": st.sampled_from(["d", "{data}", "/etc/passwd", "~/x.jsonl"]) | st.text(max_size=12)
    | hostile,
    "params": params, "extra": json_values}))
def test_job_bodies_raise_only_input_errors(job_world, body):
    settings_, engine, model, data = job_world
    where = {"{model}": model, "{data}": data}
    body = {k: where.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    try:
        job = JobCreate.model_validate(body)
    except ValueError:  # pydantic's ValidationError: the API's 422
        return
    with Session(engine) as session:
        try:
            validated = validate_job(session, job, settings_)
        except JobInputError as exc:
            assert exc.field and exc.message and 400 <= exc.status_code < 500
            return
    assert validated.model_path and validated.dataset_path
