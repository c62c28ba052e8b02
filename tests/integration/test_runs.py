"""Run history through a real server: GET /api/jobs filters, sort, pages and X-Total-Count;
PATCH name/notes/tags; metrics export; the jobs list page with sparklines."""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from app.models import JobStatus
from tests.helpers.runs import add_run, engine_for
from tests.helpers.server import kill_workers, make_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("runs-home")
    srv = make_server(home)
    srv.start()
    yield srv
    kill_workers(srv)
    srv.stop()


@pytest.fixture(scope="module")
def runs(server):
    """Seven runs with known names, statuses, tags, durations and final losses."""
    e = engine_for(server.home)
    ids = {
        "alpha": add_run(e, "alpha baseline", tags=["baseline"], minutes=10,
                         losses=[0.9, 0.7, 0.5], notes="first try with the seed's values"),
        "beta": add_run(e, "beta lr sweep", backend="mlx", method="sft", model="mlx-q4",
                        tags=["sweep", "lr:1e-5"], minutes=30, losses=[0.8, 0.4, 0.2]),
        "gamma": add_run(e, "gamma 100%_done", status=JobStatus.failed, minutes=1,
                         losses=[1.2, 1.1]),
        "delta": add_run(e, "Delta", status=JobStatus.queued, minutes=None),
        "eps": add_run(e, "epsilon", backend="mlx", method="kto", tags=["sweep"], minutes=5,
                       losses=[0.6, 0.35]),
        "zeta": add_run(e, "zeta", status=JobStatus.cancelled, minutes=3, losses=[0.55]),
        "eta": add_run(e, "eta", status=JobStatus.interrupted, minutes=20, losses=[2.0, 1.5]),
    }
    return ids


def names(server, query: str) -> tuple[list[str], int]:
    req = urllib.request.Request(server.url + "/api/jobs" + query)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return ([j["name"] for j in json.loads(resp.read())],
                int(resp.headers["X-Total-Count"]))


# --- GET /api/jobs -------------------------------------------------------------------------
def test_unfiltered_list_keeps_its_contract_newest_first(server, runs):
    got, total = names(server, "")
    assert total == 7 and len(got) == 7
    assert got[0] == "eta" and got[-1] == "alpha baseline"  # id descending, as before
    job = server.get("/api/jobs?limit=1")[0]
    for key in ("id", "name", "status", "backend", "method", "model", "dataset", "params",
                "created_at", "started_at", "finished_at", "step", "total_steps", "error",
                "run_dir", "adapter_path", "notes", "tags"):
        assert key in job


@pytest.mark.parametrize("query, expected", [
    ("?status=failed", {"gamma 100%_done"}),
    ("?backend=mlx", {"beta lr sweep", "epsilon"}),
    ("?method=sft", {"beta lr sweep"}),
    ("?model=mlx-q4", {"beta lr sweep"}),
    ("?tag=sweep", {"beta lr sweep", "epsilon"}),
    ("?tag=lr:1e-5", {"beta lr sweep"}),
    ("?tag=swee", set()),  # a whole tag, not a substring
    ("?q=SWEEP", {"beta lr sweep"}),  # case-insensitive, in the name
    ("?q=seed's", {"alpha baseline"}),  # ... and in the notes
    ("?q=100%25_", {"gamma 100%_done"}),  # % and _ are literal, not LIKE wildcards
    ("?q=%25", {"gamma 100%_done"}),
    ("?backend=mlx&tag=sweep&method=kto", {"epsilon"}),
    ("?backend=cuda", set()),
])
def test_filters(server, runs, query, expected):
    got, total = names(server, query)
    assert set(got) == expected and total == len(expected)


@pytest.mark.parametrize("query, expected", [
    ("?sort=name", ["alpha baseline", "beta lr sweep", "Delta", "epsilon", "eta",
                    "gamma 100%_done", "zeta"]),
    ("?sort=name&order=desc", ["zeta", "gamma 100%_done", "eta", "epsilon", "Delta",
                               "beta lr sweep", "alpha baseline"]),
    # lowest last loss first; runs without a loss last
    ("?sort=final_loss", ["beta lr sweep", "epsilon", "alpha baseline", "zeta",
                          "gamma 100%_done", "eta", "Delta"]),
    ("?sort=final_loss&order=desc", ["eta", "gamma 100%_done", "zeta", "alpha baseline",
                                     "epsilon", "beta lr sweep", "Delta"]),
    ("?sort=duration", ["beta lr sweep", "eta", "alpha baseline", "epsilon", "zeta",
                        "gamma 100%_done", "Delta"]),
    # lifecycle order, newest first within a status
    ("?sort=status", ["Delta", "epsilon", "beta lr sweep", "alpha baseline",
                      "gamma 100%_done", "zeta", "eta"]),
    ("?sort=created&order=asc", ["alpha baseline", "beta lr sweep", "gamma 100%_done",
                                 "Delta", "epsilon", "zeta", "eta"]),
])
def test_sort(server, runs, query, expected):
    assert names(server, query)[0] == expected


def test_pages_do_not_overlap_and_count_everything(server, runs):
    seen = []
    for offset in range(0, 8, 3):
        got, total = names(server, f"?sort=name&limit=3&offset={offset}")
        assert total == 7
        seen += got
    assert len(seen) == 7 and len(set(seen)) == 7
    assert names(server, "?offset=100") == ([], 7)


@pytest.mark.parametrize("query, field", [
    ("?sort=loss", "sort"), ("?order=up", "order"), ("?status=done", "status"),
    ("?limit=0", "limit"), ("?offset=-1", "offset"), ("?q=" + "x" * 201, "q"),
])
def test_bad_list_parameters_are_422_naming_them(server, query, field):
    status, body = server.request("GET", "/api/jobs" + query)
    assert status == 422 and body["detail"][0]["field"] == field, body


# --- PATCH /api/jobs/{id} --------------------------------------------------------------------
def test_patch_name_notes_and_tags(server, runs):
    jid = runs["zeta"]
    status, job = server.request("PATCH", f"/api/jobs/{jid}", {
        "notes": "LR too high\nloss spiked at 300", "tags": ["keep", " keep", "v2"]})
    assert status == 200, job
    assert job["tags"] == ["keep", "v2"] and job["notes"].startswith("LR too high\n")
    assert job["name"] == "zeta"  # untouched: left out
    status, job = server.request("PATCH", f"/api/jobs/{jid}", {"name": "zeta (kept)"})
    assert status == 200 and job["name"] == "zeta (kept)" and job["tags"] == ["keep", "v2"]
    assert set(names(server, "?tag=v2")[0]) == {"zeta (kept)"}
    status, job = server.request("PATCH", f"/api/jobs/{jid}", {"tags": [], "name": "zeta"})
    assert status == 200 and job["tags"] == []


@pytest.mark.parametrize("body, field, words", [
    ({"tags": ["has space"]}, "tags", "letters, digits"),
    ({"tags": ["-dash-first"]}, "tags", "starting with a letter"),
    ({"tags": ["x" * 33]}, "tags", "longer than 32"),
    ({"tags": [f"t{i}" for i in range(21)]}, "tags", "at most 20"),
    ({"tags": [""]}, "tags", "empty"),
    ({"tags": "a,b"}, "tags", "list"),
    ({"notes": "n" * 10_001}, "notes", "limit is 10000"),
    ({"notes": "bell\x07"}, "notes", "control character"),
    ({"name": "a\nb"}, "name", "control character"),
    ({"name": "n" * 201}, "name", "limit is 200"),
    ({"status": "succeeded"}, "status", "name, notes and tags"),
])
def test_patch_refuses_bad_values_naming_the_field(server, runs, body, field, words):
    jid = runs["eta"]
    before = server.get(f"/api/jobs/{jid}")
    status, resp = server.request("PATCH", f"/api/jobs/{jid}", body)
    assert status == 422, resp
    assert resp["detail"][0]["field"] == field and words in resp["detail"][0]["msg"], resp
    after = server.get(f"/api/jobs/{jid}")
    assert (after["name"], after["notes"], after["tags"]) == \
        (before["name"], before["notes"], before["tags"])


def test_patch_unknown_job_is_404_and_a_form_post_is_refused(server, runs):
    assert server.request("PATCH", "/api/jobs/999999", {"notes": "x"})[0] == 404
    status, body = server.request("PATCH", f"/api/jobs/{runs['eta']}", None,
                                  headers={"Content-Type": "text/plain"})
    assert status == 415, body  # a cross-site form cannot change a run


# --- export ------------------------------------------------------------------------------
def fetch(server, path):
    with urllib.request.urlopen(server.url + path, timeout=30) as resp:
        return resp.headers, resp.read().decode()


def test_metrics_export_csv_and_json_wide(server):
    e = engine_for(server.home)
    jid = add_run(e, "export me/now", losses=[0.5, 0.25, 0.125],
                  extra={"kl": [0.01, None, 0.03], "rewards/margins": [1e-9, 2.5]})
    headers, text = fetch(server, f"/api/jobs/{jid}/metrics.csv")
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"] == \
        f'attachment; filename="job-{jid}-export-me-now-metrics.csv"'
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["step", "loss", "kl", "rewards/margins"]
    assert rows[1:] == [["1", "0.5", "0.01", "1e-09"], ["2", "0.25", "", "2.5"],
                        ["3", "0.125", "0.03", ""]]
    headers, text = fetch(server, f"/api/jobs/{jid}/metrics.json")
    assert headers["Content-Disposition"].endswith('-metrics.json"')
    assert json.loads(text) == {"step": [1, 2, 3], "loss": [0.5, 0.25, 0.125],
                                "kl": [0.01, None, 0.03], "rewards/margins": [1e-9, 2.5, None]}
    empty = add_run(e, "nothing logged", minutes=None, status=JobStatus.queued)
    assert fetch(server, f"/api/jobs/{empty}/metrics.csv")[1] == "step\n"
    assert server.request("GET", "/api/jobs/999999/metrics.csv")[0] == 404


def test_export_has_every_point_not_a_downsample(server):
    e = engine_for(server.home)
    jid = add_run(e, "long", losses=[1.0 / (i + 1) for i in range(6000)])
    _, text = fetch(server, f"/api/jobs/{jid}/metrics.csv")
    assert len(text.splitlines()) == 6001


# --- the jobs list page ------------------------------------------------------------------
def page(server, path):
    return fetch(server, path)[1]


def test_jobs_page_filters_keep_in_the_refresh_url_and_rows_carry_sparklines(server, runs):
    html = page(server, "/?backend=mlx&tag=sweep&sort=final_loss&q=")
    body = html[html.index('<tbody id="jobs-body"'):]
    refresh = re.search(r'<tbody id="jobs-body" hx-get="([^"]+)"', body).group(1)
    assert refresh == "/fragments/jobs?backend=mlx&amp;tag=sweep&amp;sort=final_loss"
    rows = re.findall(r'<tr data-job-id="(\d+)">', body)
    assert rows == [str(runs["beta"]), str(runs["eps"])]  # filtered and sorted
    assert "1–2 of 2 runs" in body
    spark = re.search(r"<svg class=\"spark\"[^>]*>.*?</svg>", body, re.S).group(0)
    assert "style=" not in spark and "<polyline points=" in spark
    assert 'aria-label="loss from 0.8 to 0.2 (low 0.2)"' in spark
    assert '<td class="num mono final-loss">0.2</td>' in body
    assert 'class="tag" href="/?tag=lr%3A1e-5"' in body
    # the form shows what the URL asked for
    assert '<option value="mlx" selected>' in html
    assert '<option value="final_loss" selected>' in html
    # the fragment alone answers the same way
    frag = page(server, "/fragments/jobs?backend=mlx&tag=sweep&sort=final_loss")
    assert re.findall(r'<tr data-job-id="(\d+)">', frag) == rows


def test_jobs_page_pages_and_forgives_odd_parameters(server, runs):
    html = page(server, "/?sort=nonsense&status=weird&page=zz&order=sideways")
    assert html.count('<tr data-job-id=') >= 7  # everything, newest first
    e = engine_for(server.home)
    for i in range(26):
        add_run(e, f"bulk {i:02d}", tags=["bulk"], losses=[1.0])
    html = page(server, "/?tag=bulk&sort=name")
    assert "1–25 of 26 runs" in html and "page 1 of 2" in html
    assert 'href="/?tag=bulk&amp;sort=name&amp;page=2"' in html
    html = page(server, "/?tag=bulk&sort=name&page=2")
    assert "26–26 of 26 runs" in html and "bulk 25" in html and "bulk 00" not in html
    assert 'hx-get="/fragments/jobs?tag=bulk&amp;sort=name&amp;page=2"' in html
    assert "No runs match these filters" in page(server, "/?tag=no-such-tag")
    html = page(server, "/?tag=bulk&sort=name&page=9")  # past the end: the last page
    assert "26–26 of 26 runs" in html and "page 2 of 2" in html


# --- the job page's notes form ---------------------------------------------------------------
def post_form(server, path, data, headers=None):
    body = urllib.parse.urlencode(data).encode()
    req = urllib.request.Request(server.url + path, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def csrf_token(server, jid) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', page(server, f"/jobs/{jid}"))[1]


def test_notes_form_needs_the_csrf_token_and_answers_htmx_with_the_block(server, runs):
    jid = runs["gamma"]
    status, _, body = post_form(server, f"/jobs/{jid}/notes", {"notes": "x", "tags": "a"})
    assert status == 403 and "Form refused" in body
    assert server.get(f"/api/jobs/{jid}")["notes"] == ""
    token = csrf_token(server, jid)
    status, _, body = post_form(server, f"/jobs/{jid}/notes",
                                {"notes": "diverged at step 2", "tags": "bad tag!"},
                                {"HX-Request": "true", "X-CSRF-Token": token})
    assert status == 200 and 'id="notes-tags-error"' in body and "bad tag!" in body
    assert body.lstrip().startswith('<section id="job-notes"')  # the block, not a page
    status, _, body = post_form(server, f"/jobs/{jid}/notes",
                                {"notes": "diverged at step 2", "tags": "lr-high, diverged"},
                                {"HX-Request": "true", "X-CSRF-Token": token})
    assert status == 200 and '<div class="notes-text" id="notes-shown">diverged' in body
    assert server.get(f"/api/jobs/{jid}")["tags"] == ["lr-high", "diverged"]
    # a plain form post (no JavaScript) goes back to the job page
    status, headers, _ = post_form(server, f"/jobs/{jid}/notes",
                                   {"notes": "", "tags": "", "csrf_token": token})
    assert status == 303 and headers["Location"] == f"/jobs/{jid}"
    assert server.get(f"/api/jobs/{jid}")["tags"] == []
    edit = page(server, f"/jobs/{jid}/notes/edit")
    assert '<textarea id="notes-text" name="notes"' in edit
    with pytest.raises(urllib.error.HTTPError) as missing:
        page(server, "/jobs/999999/notes")
    assert missing.value.code == 404


def test_final_loss_of_a_resumed_run_is_its_later_write(server):
    """A run resumed from a checkpoint logs the steps after it again; like the charts, the
    final loss is the later write (by seq) of the last step."""
    from sqlmodel import Session

    from app.models import Metric

    e = engine_for(server.home)
    jid = add_run(e, "resumed run", tags=["resumed"], losses=[0.9, 0.8, 0.7])
    with Session(e) as s:
        s.add(Metric(job_id=jid, seq=10, step=3, name="loss", value=0.65))
        s.commit()
    row = page(server, "/?tag=resumed")
    assert '<td class="num mono final-loss">0.65</td>' in row
