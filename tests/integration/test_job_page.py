"""The job page's data over a real server and a real tiny torch run: artifacts and their zip
download (confined to the run folder), memory and throughput series from the stored events,
clone prefill, and the page itself. Series downsampling is checked on events put in SQLite.
"""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.request
import zipfile
from html import unescape

import pytest
from sqlmodel import Session

from app.db import make_engine, migrate
from app.models import Event, Job, JobStatus
from app.web.api.series import series


def fetch(server, path: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=60) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_artifacts_list_and_zip_download(live_server, finished_job):
    jid = finished_job["id"]
    items = live_server.get(f"/api/jobs/{jid}/artifacts")
    kinds = [a["kind"] for a in items]
    assert kinds[0] == "adapter" and kinds.count("checkpoint") == 2, items
    adapter = items[0]
    assert adapter["rel"] == "adapter" and adapter["exists"] and adapter["size_bytes"] > 1000
    status, body, headers = fetch(live_server, adapter["download"])
    assert status == 200 and headers["content-type"] == "application/zip"
    assert f'job{jid}-adapter.zip' in headers["content-disposition"]
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert "adapter/adapter_config.json" in names
    assert any(n.startswith("adapter/adapter_model") for n in names)
    ckpt = items[-1]
    assert ckpt["step"] == 6 and ckpt["rel"] == "checkpoints/checkpoint-6" or ckpt["step"] == 6
    status, body, _ = fetch(live_server, ckpt["download"])
    assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).testzip() is None


@pytest.mark.parametrize("path, code, words", [
    ("../../prospect.db", 400, "outside"),
    ("..", 400, "outside"),
    ("/etc", 400, "relative"),
    ("nothing-here", 404, "does not exist"),
    ("", 400, "relative"),
])
def test_download_stays_inside_the_run_folder(live_server, finished_job, path, code, words):
    status, body, _ = fetch(live_server, f"/api/jobs/{finished_job['id']}/artifacts/download"
                            f"?path={urllib.parse.quote(path)}")
    assert status == code and words in body.decode(), body


def test_download_of_a_missing_job_is_404(live_server):
    status, body, _ = fetch(live_server, "/api/jobs/999999/artifacts/download?path=adapter")
    assert status == 404 and b"does not exist" in body


def test_memory_and_progress_series_come_from_stored_events(live_server, finished_job):
    jid = finished_job["id"]
    mem = live_server.get(f"/api/jobs/{jid}/series/memory")
    assert len(mem["seq"]) >= 2 and mem["seq"] == sorted(mem["seq"])
    assert all(v > 10_000_000 for v in mem["rss"])  # a torch process is tens of MB at least
    assert mem["system_total"][0] > mem["system_available"][0] > 0
    assert mem["elapsed_s"][0] >= 0 and mem["elapsed_s"] == sorted(mem["elapsed_s"])
    prog = live_server.get(f"/api/jobs/{jid}/series/progress")
    assert prog["step"][-1] == 6 and any(v for v in prog["tokens_per_s"] if v)
    status, body, _ = fetch(live_server, f"/api/jobs/{jid}/series/nonsense")
    assert status == 422
    status, body, _ = fetch(live_server, f"/api/jobs/{jid}/series/memory?max_points=3")
    assert status == 422 and b"max_points" in body


def test_job_page_shows_charts_config_artifacts_and_actions(live_server, finished_job):
    jid = finished_job["id"]
    status, body, _ = fetch(live_server, f"/jobs/{jid}")
    html = unescape(body.decode())
    assert status == 200
    for chart in ("chart-loss", "chart-rewards", "chart-lr", "chart-tps", "chart-mem"):
        assert f'id="{chart}"' in html
    assert f'/api/jobs/{jid}/artifacts/download?path=adapter' in html
    assert '"max_steps": 6' in html  # the worker's config.json, in full
    # Only the actions that apply to a job that succeeded (templates/_job_actions.html).
    tags = re.findall(r'<(?:a|button)\b[^>]*data-action="(\w+)"[^>]*>', html)
    assert set(tags) == {"clone", "fuse", "delete"}
    assert 'sse-connect' not in html  # a finished job reads the database only


def test_clone_fills_the_form_with_the_jobs_settings(live_server, finished_job):
    status, body, _ = fetch(live_server, f"/jobs/new?from={finished_job['id']}")
    html = body.decode()
    assert status == 200
    assert 'value="page run (copy)"' in html
    assert re.search(r'id="f-max_steps"[^>]*value="6"', html), "max_steps not prefilled"
    assert re.search(r'id="f-save_steps"[^>]*value="3"', html)
    assert re.search(r'<option value="tiny-demo"[^>]*selected', html)
    status, body, _ = fetch(live_server, "/jobs/new?from=999999")  # gone: a blank form
    assert status == 200 and 'value=""' in body.decode()
    status, _, _ = fetch(live_server, "/jobs/new?from=abc")
    assert status == 422


def test_series_downsampling_keeps_the_memory_peak(tmp_path):
    engine = make_engine(tmp_path / "p.db")
    migrate(engine)
    with Session(engine) as session:
        job = Job(name="long", backend="torch", method="kto", model="m", dataset="d",
                  status=JobStatus.succeeded)
        session.add(job)
        session.commit()
        n, spike_at = 20_000, 12_345
        for seq in range(1, n + 1):
            rss = 5e9 if seq == spike_at else 1e9 + seq
            session.add(Event(job_id=job.id, seq=seq, t=1000.0 + 2 * seq, type="memory",
                              data={"rss_bytes": rss, "system": {"total": 16e9, "used": 8e9,
                                                                 "available": 8e9},
                                    "backend": {"name": "mps", "active_bytes": 2e9}}))
        session.commit()
        out = series(session, job.id, "memory", 500, 0)
    assert 2 <= len(out["seq"]) <= 500
    assert spike_at in out["seq"] and max(out["rss"]) == 5e9
    assert out["seq"][0] == 1 and out["seq"][-1] == n
    assert out["backend_name"] == "mps" and out["elapsed_s"][-1] == pytest.approx(2 * (n - 1))
