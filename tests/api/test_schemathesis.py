"""schemathesis against the server's own OpenAPI: no 5xx, every error a well-formed 4xx JSON.

In-process over ASGI and without the lifespan, so no supervisor runs and nothing trains:
created jobs stay queued (and Settings.python is /bin/false besides). The SSE operation is
left out here (a live job's stream never ends by design); test_hostile and test_load cover it.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from sqlmodel import Session

from app.config import Settings
from app.db import migrate
from app.main import create_app
from app.models import DatasetEntry, Job, JobStatus, ModelEntry
from tests.helpers.data import write_assets
from tests.helpers.fake_hub import FakeHub

MAX_EXAMPLES = 25
CASES: Counter[str] = Counter()  # cases run per operation, printed at the end (-s)


@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    home = tmp_path_factory.mktemp("schemathesis-home")
    # POST /api/models/download asks the hub: a loopback one without repos (a 404 for any
    # id), never the network. Ids of the Hugging Face cache: an empty folder.
    hub = FakeHub().start()
    saved = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_CACHE")}
    os.environ.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(home / "hf-cache"))
    app = create_app(Settings(home=home, python="/bin/false", allowed_hosts=["testserver"]))
    migrate(app.state.engine)
    model, data = write_assets(home)
    with Session(app.state.engine) as s:
        s.add(ModelEntry(id="m", path=str(model), source="test"))
        s.add(DatasetEntry(id="d", path=str(data), rows=8))
        for status in (JobStatus.queued, JobStatus.succeeded, JobStatus.failed):
            s.add(Job(backend="torch", method="kto", model="m", dataset="d", status=status,
                      model_path=str(model), dataset_path=str(data),
                      run_dir=str(home / "runs" / status.value)))
        s.add(Job(backend="mlx", method="sft", model="m", dataset="d"))  # never launched
        s.commit()
    yield app
    hub.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    print("\nschemathesis cases:", dict(CASES), "total", sum(CASES.values()))


def assert_well_formed(response, path: str = "") -> None:
    """A 4xx is JSON with a `detail`: a sentence, or a list of {loc, msg, type}; under /v1
    (the OpenAI-compatible API) OpenAI's {"error": {message, type, param, code}}."""
    if response.status_code < 400:
        return
    assert response.status_code < 500, response.text
    assert response.headers["content-type"][0].startswith("application/json"), response.headers
    if path.startswith("/v1/"):
        error = json.loads(response.content)["error"]
        assert isinstance(error["message"], str) and error["message"], error
        assert error["type"] == "invalid_request_error" and "code" in error, error
        return
    detail = json.loads(response.content)["detail"]
    if isinstance(detail, list):
        assert detail and all({"loc", "msg", "type"} <= set(d) for d in detail), detail
    else:
        assert isinstance(detail, str) and detail, detail


def run_operation(operation, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def check(case):
        CASES[f"{operation.label} {mode.value}"] += 1
        response = case.call()
        assert_well_formed(response, operation.path)
        case.validate_response(response, checks=[not_a_server_error,
                                                 response_schema_conformance])

    try:
        check()
    except Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE  # an operation with no input has no bad input


def test_api_never_answers_5xx_and_errors_are_well_formed(api_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [r.ok() for r in schema.get_all_operations()]
    labels = [op.label for op in operations]
    assert "POST /api/jobs" in labels and "DELETE /api/jobs/{job_id}" in labels
    for operation in operations:
        if operation.path.endswith("/events"):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run_operation(operation, mode)
