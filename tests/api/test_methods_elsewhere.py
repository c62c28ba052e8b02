"""Methods that start from their own endpoints: POST /api/jobs and POST /api/plan point there
instead of creating a job that skipped those endpoints' checks."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("backend", "method", "where"), [
    ("mlx", "convert", "/api/models/{id}/convert"),
    ("hub", "download", "/api/models/download"),
])
def test_post_jobs_points_to_the_endpoint_that_checks_the_job(client, backend, method, where):
    r = client.post("/api/jobs", json={"backend": backend, "method": method,
                                       "model": "tiny-demo", "dataset": "demo-kto"})
    assert r.status_code == 422, r.text
    assert where in r.text
    assert client.get("/api/jobs").json() == []


@pytest.mark.parametrize(("backend", "method"), [("mlx", "convert"), ("hub", "download"),
                                                 ("mlx", "fuse")])
def test_plan_refuses_methods_that_train_nothing(client, backend, method):
    r = client.post("/api/plan", json={"backend": backend, "method": method,
                                       "model": "tiny-demo"})
    assert r.status_code == 422, r.text
    assert "trains nothing" in r.text
