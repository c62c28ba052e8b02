"""The job page's and the adapters page's actions, as htmx sends them (app/web/pages/job.py,
app/web/pages/library.py): each answers with the fragment htmx swaps (the status card with
the action bar for the job's new status out of band, or the adapters list) or HX-Redirect;
a refused action comes back as HTML in that fragment; a request without the page's CSRF
token is refused. TestClient, no lifespan: no supervisor, no worker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.models import Job, JobStatus
from tests.helpers.pages import HX, add_job


def buttons(html: str) -> set[str]:
    """The actions the answer's action bar offers."""
    bar = re.search(r'<div class="actions job-actions" id="job-actions".*?</div>', html, re.S)
    assert bar, html
    return set(re.findall(r'data-action="([\w-]+)"', bar.group(0)))


def refusal(html: str) -> str:
    found = re.search(r'<p class="action-error[^>]*id="action-error"([^>]*)>(.*?)</p>', html,
                      re.S)
    assert found, html
    return "" if "hidden" in found.group(1) else found.group(2)


def status_of(app, job_id: int) -> JobStatus | None:
    with Session(app.state.engine) as s:
        job = s.get(Job, job_id)
        return job.status if job else None


def with_run_dir(app, tmp_path: Path, status: JobStatus, adapter: bool = False,
                 checkpoint: bool = False, **fields) -> Job:
    run = tmp_path / "runs" / f"{len(list(tmp_path.glob('runs/*'))) + 1:06d}"
    run.mkdir(parents=True)
    if adapter:
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 2048)
        fields["adapter_path"] = str(run / "adapter")
    if checkpoint:
        (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        fields["last_checkpoint"] = str(run / "checkpoints" / "checkpoint-2")
    model = Path(app.state.settings.home_dir) / "models" / "tiny-demo"
    data = Path(app.state.settings.home_dir) / "datasets" / "demo-kto.jsonl"
    return add_job(app, status=status, run_dir=str(run), model_path=str(model),
                   dataset_path=str(data), **fields)


# --- the job page ------------------------------------------------------------------------------
def test_cancel_a_queued_job_answers_the_card_with_the_bar_for_cancelled(app, client):
    job = add_job(app, status=JobStatus.queued)
    r = client.post(f"/jobs/{job.id}/cancel", headers=HX)
    assert r.status_code == 200 and "<html" not in r.text
    assert 'class="badge badge-cancelled"' in r.text
    assert buttons(r.text) == {"clone", "delete"}  # nothing to resume: no checkpoint
    assert f'id="job-actions" data-job-id="{job.id}" hx-swap-oob="true"' in r.text
    assert refusal(r.text) == ""  # an answer clears an older refusal
    assert status_of(app, job.id) == JobStatus.cancelled


def test_cancel_a_running_job_marks_it_and_hides_cancel(app, client):
    job = add_job(app, status=JobStatus.running, phase="training")
    r = client.post(f"/jobs/{job.id}/cancel", headers=HX)
    assert r.status_code == 200
    assert "cancelling, saving a checkpoint" in r.text
    assert buttons(r.text) == {"clone"}  # cancel asked for; delete once it has ended
    assert status_of(app, job.id) == JobStatus.running


def test_cancel_a_finished_job_is_refused_in_the_card(app, client, tmp_path):
    job = with_run_dir(app, tmp_path, JobStatus.succeeded, adapter=True)
    r = client.post(f"/jobs/{job.id}/cancel", headers=HX)
    assert r.status_code == 200  # htmx swaps only a 2xx: the refusal is in the fragment
    assert refusal(r.text) == f"Cancel failed: job {job.id} is already succeeded"
    assert 'class="badge badge-succeeded"' in r.text
    assert buttons(r.text) == {"clone", "fuse", "delete"}
    plain = client.post(f"/jobs/{job.id}/cancel")  # not htmx: the refusal's own status
    assert plain.status_code == 409 and "is already succeeded" in plain.text


def test_live_refresh_carries_the_bar_but_leaves_a_refusal_alone(app, client):
    job = add_job(app, status=JobStatus.failed)
    r = client.get(f"/jobs/{job.id}/card")
    assert buttons(r.text) == {"clone", "delete"}
    assert 'id="action-error"' not in r.text
    page = client.get(f"/jobs/{job.id}").text  # the page: the bar in the head, once
    assert page.count('id="job-actions"') == 1 and "hx-swap-oob" not in page
    assert "data-url" not in page and "data-can" not in page


def test_resume_redirects_to_the_page_and_queues_the_job(app, client, tmp_path):
    job = with_run_dir(app, tmp_path, JobStatus.cancelled, checkpoint=True)
    r = client.post(f"/jobs/{job.id}/resume", headers=HX)
    assert r.status_code == 200 and r.headers["HX-Redirect"] == f"/jobs/{job.id}"
    assert status_of(app, job.id) == JobStatus.queued


def test_resume_without_a_checkpoint_is_refused_in_the_card(app, client):
    job = add_job(app, status=JobStatus.failed)
    r = client.post(f"/jobs/{job.id}/resume", headers=HX)
    assert r.status_code == 200 and "HX-Redirect" not in r.headers
    assert refusal(r.text) == f"Resume failed: job {job.id} has no checkpoint to resume " \
                              "from; clone it instead"
    assert client.post(f"/jobs/{job.id}/resume").status_code == 409


def test_fuse_redirects_to_the_new_fuse_job(app, client, tmp_path):
    job = with_run_dir(app, tmp_path, JobStatus.succeeded, adapter=True)
    r = client.post(f"/jobs/{job.id}/fuse", headers=HX)
    assert r.status_code == 200, r.text
    fuse_id = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
    with Session(app.state.engine) as s:
        fused = s.get(Job, fuse_id)
        assert fused.method == "fuse" and fused.params["adapter_path"] == job.adapter_path
    # A job without an adapter: refused as POST /api/adapters/{id}/fuse refuses it.
    other = add_job(app, status=JobStatus.failed)
    r = client.post(f"/jobs/{other.id}/fuse", headers=HX)
    assert refusal(r.text).startswith(f"Fuse failed: job {other.id} is failed and has no "
                                      "adapter to fuse")
    assert client.post(f"/jobs/{other.id}/fuse").status_code == 409


def test_delete_redirects_to_the_jobs_list(app, client, tmp_path):
    job = with_run_dir(app, tmp_path, JobStatus.failed)
    r = client.delete(f"/jobs/{job.id}", headers=HX)
    assert r.status_code == 200 and r.headers["HX-Redirect"] == "/"
    assert status_of(app, job.id) is None and not Path(job.run_dir).exists()


def test_delete_a_running_job_is_refused_in_the_card(app, client):
    job = add_job(app, status=JobStatus.running)
    r = client.delete(f"/jobs/{job.id}", headers=HX)
    assert r.status_code == 200
    assert refusal(r.text) == f"Delete failed: job {job.id} is running; cancel it before " \
                              "deleting"
    assert buttons(r.text) == {"clone", "cancel"}
    assert client.delete(f"/jobs/{job.id}").status_code == 409
    assert status_of(app, job.id) == JobStatus.running


def test_an_action_on_a_missing_job_goes_to_its_page(client):
    r = client.post("/jobs/4242/cancel", headers=HX)
    assert r.status_code == 200 and r.headers["HX-Redirect"] == "/jobs/4242"
    assert client.post("/jobs/4242/cancel").status_code == 404


@pytest.mark.parametrize("method,path", [
    ("POST", "/jobs/{id}/cancel"), ("POST", "/jobs/{id}/resume"), ("POST", "/jobs/{id}/fuse"),
    ("DELETE", "/jobs/{id}"), ("POST", "/adapters/{id}/fuse"), ("DELETE", "/adapters/{id}")])
def test_an_action_without_the_csrf_token_is_refused(app, method, path, tmp_path):
    job = with_run_dir(app, tmp_path, JobStatus.succeeded, adapter=True)
    url = path.format(id=job.id)
    bare = TestClient(app, base_url="http://127.0.0.1")
    r = bare.request(method, url, headers=HX)
    assert r.status_code == 403 and "Form refused" in r.text
    r = bare.request(method, url, headers={**HX, "X-CSRF-Token": "stale"})
    assert r.status_code == 403  # the middleware: a wrong token
    assert status_of(app, job.id) == JobStatus.succeeded and Path(job.adapter_path).is_dir()


# --- the adapters page -------------------------------------------------------------------------
def test_adapters_delete_answers_the_list_without_the_row(app, client, tmp_path):
    job = with_run_dir(app, tmp_path, JobStatus.succeeded, adapter=True)
    page = client.get("/adapters").text
    assert f'hx-delete="/adapters/{job.id}"' in page and "data-url" not in page
    assert "/static/js/library.js" not in page
    r = client.delete(f"/adapters/{job.id}", headers=HX)
    assert r.status_code == 200 and "<html" not in r.text
    assert f'data-job-id="{job.id}"' not in r.text and "No adapters yet" in r.text
    assert 'id="action-error"' not in r.text
    assert not Path(job.adapter_path).exists() and Path(job.run_dir).is_dir()
    # Again: nothing left to delete, said in the list (404 to any other caller).
    r = client.delete(f"/adapters/{job.id}", headers=HX)
    assert r.status_code == 200
    assert f"Delete failed: job {job.id} has no adapter (never saved, or deleted already)" \
        in r.text
    assert client.delete(f"/adapters/{job.id}").status_code == 404


def test_adapters_fuse_redirects_to_the_fuse_job(app, client, tmp_path):
    job = with_run_dir(app, tmp_path, JobStatus.succeeded, adapter=True)
    r = client.post(f"/adapters/{job.id}/fuse", headers=HX)
    assert r.status_code == 200 and r.headers["HX-Redirect"].startswith("/jobs/")
    running = add_job(app, status=JobStatus.running)
    r = client.post(f"/adapters/{running.id}/fuse", headers=HX)
    assert "Fuse failed: job" in r.text and 'id="adapters-table"' in r.text


def test_rest_answers_are_unchanged(app, client, tmp_path):
    """The REST routes call the same services and still answer JSON, detail a string."""
    job = with_run_dir(app, tmp_path, JobStatus.running)
    r = client.post(f"/api/adapters/{job.id}/fuse")
    assert r.status_code == 409 and isinstance(r.json()["detail"], str)
    r = client.delete(f"/api/adapters/{job.id}")
    assert r.status_code == 409 and "cancel it or wait" in r.json()["detail"]
    done = with_run_dir(app, tmp_path, JobStatus.succeeded, adapter=True)
    r = client.delete(f"/api/adapters/{done.id}")
    assert r.status_code == 200 and r.json() == {
        "job_id": done.id, "deleted": str(Path(done.adapter_path).resolve()),
        "freed_bytes": 2048}
