"""What the job pages and the jobs list show, in headless Chromium at 1366 px: charts that do
not zoom into float noise, the memory chart scaled to a small process, a resumed run's
marker, a fuse job's own page, and a jobs table that fits its card.

The runs are written straight into the server's database (tests/runs_data.py) with the
events a worker would have written: these pages read only the database."""

from __future__ import annotations

import subprocess

import psutil
import pytest
from sqlmodel import Session

from app.models import Event, Job, JobStatus
from tests.helpers.browser import open_page, shot, wait_js
from tests.helpers.runs import add_run, engine_for
from tests.helpers.server import kill_workers, make_server

pytestmark = [pytest.mark.browser]
GiB = 2**30
T0 = 1_790_000_000.0  # the runs' first event (unix time)


def add_events(engine, job_id: int, events: list[tuple[float, str, dict]]) -> None:
    with Session(engine) as s:
        for seq, (t, kind, data) in enumerate(events, start=1):
            s.add(Event(job_id=job_id, seq=seq, t=T0 + t, type=kind, data=data))
        job = s.get(Job, job_id)
        job.last_seq = len(events)
        s.add(job)
        s.commit()


def memory(t: float, rss_gib: float) -> tuple[float, str, dict]:
    return (t, "memory", {"rss_bytes": int(rss_gib * GiB), "system": {
        "total": 24 * GiB, "used": 10 * GiB, "available": 14 * GiB, "swap_used": 0}})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = make_server(tmp_path_factory.mktemp("job-views-home"))
    srv.start()
    e = engine_for(srv.home)
    ids = {
        # The demo's first run with the seed's learning rate: a loss that does not move.
        "flat": add_run(e, "flat loss", losses=[0.5, 0.499996, 0.499992]),
        "small": add_run(e, "small process", losses=[1.0 - 0.01 * i for i in range(30)]),
        "resumed": add_run(e, "resumed run", losses=[1.0 - 0.01 * i for i in range(40)]),
    }
    # A row as a real run writes it: a hub id, the default name, tags, four-digit steps.
    ids["long"] = add_run(e, "kto-Qwen2.5-0.5B-Instruct lr-sweep 2e-6 rank 16",
                          model="Qwen/Qwen2.5-0.5B-Instruct", tags=["baseline", "lr-sweep"],
                          losses=[1.0 - 0.0004 * i for i in range(1000)], minutes=95)
    add_events(e, ids["small"], [memory(2.0 * i, 0.30 + 0.004 * i) for i in range(30)])
    start = (0.0, "status", {"phase": "loading_model", "message": "loading"})
    first = [(1.0 + i, "progress", {"step": i, "total_steps": 40, "tokens_per_s": 900.0})
             for i in range(1, 21)]
    first += [memory(1.0 + i, 0.5) for i in range(1, 21)]
    stop = (25.0, "done", {"status": "cancelled"})
    again = (100.0, "status", {"phase": "loading_model", "message": "loading again"})
    second = [(100.0 + i, "progress", {"step": 16 + i, "total_steps": 40,
                                        "tokens_per_s": 950.0}) for i in range(1, 25)]
    second += [memory(100.0 + i, 0.5) for i in range(1, 25)]
    add_events(e, ids["resumed"], [start, *sorted(first), stop, again, *sorted(second)])
    ids["fuse_running"] = add_run(e, "fuse-7", method="fuse", dataset="", minutes=0.5,
                                  params={"adapter_path": "/runs/000007/adapter",
                                          "name": "tiny-demo-baseline"})
    ids["fuse_done"] = add_run(e, "fuse-8", method="fuse", dataset="", minutes=0.5,
                               params={"adapter_path": "/runs/000008/adapter",
                                       "name": "tiny-demo-faster"})
    # The running fuse needs a live process, or the supervisor rightly calls it interrupted:
    # a stand-in that only sleeps (the page reads the database, never the worker).
    worker = subprocess.Popen(["sleep", "600"], start_new_session=True)
    with Session(e) as s:  # a fuse reports two stages as steps: 2 / 2 when done
        for jid, step in ((ids["fuse_running"], 1), (ids["fuse_done"], 2)):
            job = s.get(Job, jid)
            job.step, job.total_steps = step, 2
            if jid == ids["fuse_running"]:  # running and its PID in one commit: no window
                job.status, job.finished_at = JobStatus.running, None  # without a worker
                job.pid, job.pid_started_at = worker.pid, psutil.Process(worker.pid).create_time()
            s.add(job)
        s.commit()
    ids["mlx"] = add_run(e, "mlx sft", backend="mlx", method="sft", losses=[2.0, 1.5, 1.2])
    with Session(e) as s:  # as MLX runs before the fix stored it
        job = s.get(Job, ids["mlx"])
        job.summary = {"final_loss": 1.2, "device": "Device(gpu, 0)"}
        s.add(job)
        s.commit()
    srv.ids = ids
    yield srv
    worker.kill()
    worker.wait()
    kill_workers(srv)
    srv.stop()


def chart_ready(page, key: str) -> None:
    wait_js(page, f"() => window.prospectJob && window.prospectJob.charts.{key}.plot")


def test_a_flat_loss_draws_flat_not_as_a_cliff(browser, server):
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{server.url}/jobs/{server.ids['flat']}")
    chart_ready(page, "loss")
    lo, hi = page.evaluate("() => { const s = window.prospectJob.charts.loss.plot.scales.y;"
                           " return [s.min, s.max]; }")
    assert hi - lo >= 0.5e-3 and lo < 0.499992 and hi > 0.5, (lo, hi)  # was 0.499992-0.5
    shot(page, "views-01-flat-loss", full_page=False)
    watch.check()
    context.close()


def test_memory_chart_scales_to_a_small_process_and_back(browser, server):
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{server.url}/jobs/{server.ids['small']}")
    chart_ready(page, "mem")
    labels = "() => window.prospectJob.charts.mem.plot.series.map(s => s.label)"
    ymax = "() => window.prospectJob.charts.mem.plot.scales.y.max"
    # 0.4 GiB of 24 GiB: scaled to the process by default, the total in the note.
    wait_js(page, "() => document.getElementById('mem-fit').checked")
    assert "total" not in page.evaluate(labels)
    assert page.evaluate(ymax) < 1
    note = page.inner_text("#mem-note")
    assert "machine total 24.0 GiB" in note and "process peak 426 MiB" in note, note
    ticks = page.evaluate("() => window.prospectJob.charts.mem.plot.axes[1]._values")
    assert ticks and all(t.endswith(" MiB") for t in ticks if t), ticks
    page.locator("#chart-mem").scroll_into_view_if_needed()
    shot(page, "views-02-memory-fit-process", full_page=False)
    page.uncheck("#mem-fit")  # the whole machine: the total is the axis again
    wait_js(page, labels + ".includes('total')")
    assert page.evaluate(ymax) >= 24
    assert "machine total" not in page.inner_text("#mem-note")
    shot(page, "views-03-memory-whole-machine", full_page=False)
    watch.check()
    context.close()


def test_a_resumed_run_marks_where_it_resumed(browser, server):
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{server.url}/jobs/{server.ids['resumed']}")
    for key in ("tps", "mem"):
        chart_ready(page, key)
    marks = page.evaluate("() => ['tps', 'mem'].map(k =>"
                          " window.prospectJob.charts[k].plot.prospectMarks.map(m => m.x))")
    assert marks == [[17], [100]], marks  # the first step after the restart; its time
    # x counts from the run's first event, not from the resume: the first worker's samples
    # are not squeezed into x = 0.
    xs = page.evaluate("() => window.prospectJob.stores.memory.x")
    assert xs[0] == 2 and xs[-1] == 124, xs
    page.locator("#chart-tps").scroll_into_view_if_needed()
    shot(page, "views-04-resumed-marker", full_page=False)
    watch.check()
    context.close()


def test_a_fuse_job_reads_as_a_fuse(browser, server):
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{server.url}/jobs/{server.ids['fuse_running']}")
    state = page.locator("#fuse-state")
    assert state.get_attribute("data-state") == "working"
    assert "registered as tiny-demo-baseline" in state.inner_text()
    assert page.locator("#fuse-train").count() == 0  # nothing to train with yet
    assert page.locator("#fuse-try").count() == 0  # nor to try
    artifacts = page.inner_text("#job-artifacts")
    assert "No fused model yet" in artifacts and "No adapter" not in artifacts
    card = page.inner_text("#job-card")
    assert "Step" not in card and "Tokens/s" not in card and "1 / 2" not in card
    shot(page, "views-05-fuse-running", full_page=False)

    page.goto(f"{server.url}/jobs/{server.ids['fuse_done']}")
    assert page.get_attribute("#fuse-train", "href") == "/jobs/new?model=tiny-demo-faster"
    assert page.get_attribute("#fuse-try", "href") == \
        "/playground?model=tiny-demo-faster&compare=tiny-demo"
    shot(page, "views-06-fuse-done", full_page=False)

    page.goto(server.url + "/")  # the list: a fuse, not "torch/fuse 2 / 2"
    row = page.locator(f"#jobs-body tr[data-job-id='{server.ids['fuse_done']}']")
    cells = row.locator("td").all_inner_texts()
    assert "torch/fuse" not in cells and "2 / 2" not in cells, cells
    assert cells[4].split() == ["fuse", "torch"] and cells[8] == "—", cells
    watch.check()
    context.close()


@pytest.mark.parametrize("width", [1366, 1024])
def test_the_jobs_table_fits_its_card(browser, server, width):
    context, page, watch = open_page(browser, width=width, height=900)
    page.goto(server.url + "/")
    page.locator("#jobs-body tr[data-job-id]").first.wait_for()
    sizes = page.evaluate("""() => {
        const wrap = document.getElementById('jobs-table');
        const table = wrap.querySelector('table');
        const last = table.querySelector('thead th:last-child').getBoundingClientRect();
        const cut = [...table.querySelectorAll('td.col-created time, td.num')]
          .filter(el => el.scrollWidth > el.clientWidth + 1 ||
                        el.getClientRects().length > 1 && el.tagName === 'TIME')
          .map(el => el.textContent);
        return {table: table.scrollWidth, box: wrap.clientWidth, right: last.right,
                viewport: innerWidth, page: document.documentElement.scrollWidth, cut: cut};
    }""")
    assert sizes["table"] <= sizes["box"], sizes  # no column hides past the card's edge
    assert sizes["right"] <= sizes["viewport"] and sizes["page"] <= width, sizes
    assert sizes["cut"] == [], sizes  # no date or number cut or wrapped mid-value
    heads = page.locator("#jobs-table thead th").all_inner_texts()
    assert "Duration" in heads[-1] or "DURATION" in heads[-1], heads
    shot(page, f"views-07-jobs-{width}", full_page=False)
    watch.check()
    context.close()


def test_an_mlx_job_names_its_device_in_words(browser, server):
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{server.url}/jobs/{server.ids['mlx']}")
    summary = page.inner_text("#job-card .summary")
    assert "on gpu" in summary and "Device(" not in summary, summary
    watch.check()
    context.close()


def test_a_dataset_page_leads_to_a_job_on_it(browser, live_server):
    from playwright.sync_api import expect

    # A second dataset: the blank form picks the demo's, so only the link can pick this one.
    copy = live_server.home / "second-kto.jsonl"  # inside the folders Prospect may read
    copy.write_bytes((live_server.home / "datasets" / "demo-kto.jsonl").read_bytes())
    status, entry = live_server.post("/api/datasets/register",
                                     {"name": "second-kto", "path": str(copy)})
    assert status in (201, 409), entry
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{live_server.url}/jobs/new")
    assert page.input_value("#f-dataset") != "second-kto"
    page.goto(f"{live_server.url}/datasets/second-kto")
    page.get_by_role("link", name="Train on this dataset").click()
    page.wait_for_url("**/jobs/new?dataset=second-kto")
    expect(page.locator("#f-dataset")).to_have_value("second-kto")
    shot(page, "views-08-train-on-dataset", full_page=False)
    watch.check()
    context.close()
