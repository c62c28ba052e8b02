"""The job page's memory chart for a job on several GPUs, in headless Chromium: a line per
rank from the stored events' ``backend.ranks`` (GET …/series/memory), in place of rank 0's
allocator lines, kept by "scale to the process", and a rank that appears in a streamed
event gets its own line. The run is written straight into the server's database with the
events rank 0 of a 2-GPU job writes (tests/helpers/runs.py)."""

from __future__ import annotations

import json

import pytest

from tests.browser.test_job_views_browser import add_events, chart_ready
from tests.helpers.browser import open_page, shot, wait_js
from tests.helpers.runs import add_run, engine_for
from tests.helpers.server import kill_workers, make_server

pytestmark = [pytest.mark.browser]
GiB = 2**30
LABELS = "() => window.prospectJob.charts.mem.plot.series.map(s => s.label)"


def memory(t: float, ranks: list[tuple[int, float]]) -> tuple[float, str, dict]:
    per_rank = [{"rank": r, "host": "gpu-box", "active_bytes": int(g * GiB),
                 "peak_bytes": int(g * GiB), "driver_bytes": int((g + 0.5) * GiB)}
                for r, g in ranks]
    return (t, "memory", {"rss_bytes": int(1.2 * GiB), "backend": {
        "name": "cuda", "active_bytes": per_rank[0]["active_bytes"],
        "driver_bytes": per_rank[0]["driver_bytes"], "ranks": per_rank},
        "system": {"total": 64 * GiB, "used": 20 * GiB, "available": 44 * GiB,
                   "swap_used": 0}})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = make_server(tmp_path_factory.mktemp("memory-ranks-home"))
    srv.start()
    e = engine_for(srv.home)
    job_id = add_run(e, "two gpus", losses=[1.0 - 0.02 * i for i in range(20)],
                     params={"num_processes": 2, "learning_rate": 5e-7})
    add_events(e, job_id, [memory(2.0 * i, [(0, 3.0 + 0.05 * i), (1, 4.0 + 0.05 * i)])
                           for i in range(20)])
    srv.job_id = job_id
    yield srv
    kill_workers(srv)
    srv.stop()


def test_memory_chart_draws_a_line_per_gpu(browser, server):
    context, page, watch = open_page(browser, width=1366, height=900)
    page.goto(f"{server.url}/jobs/{server.job_id}")
    chart_ready(page, "mem")
    wait_js(page, LABELS + ".includes('GPU rank 1')")
    labels = page.evaluate(LABELS)
    assert "GPU rank 0" in labels and "GPU rank 1" in labels, labels
    assert "cuda allocator" not in labels and "cuda driver" not in labels, labels  # rank 0's
    last = page.evaluate("() => { const p = window.prospectJob.charts.mem.plot;"
                         " return p.series.map((s, i) => [s.label, p.data[i][p.data[i]"
                         ".length - 1]]); }")
    values = dict(last)
    assert values["GPU rank 1"] == pytest.approx(4.95) and values["GPU rank 0"] == \
        pytest.approx(3.95)
    # 4 GiB of 64: scaled to the process, the ranks stay (they are the process's own lines);
    # the whole machine draws them too.
    wait_js(page, "() => document.getElementById('mem-fit').checked")
    assert "total" not in page.evaluate(LABELS)
    page.locator("#chart-mem").scroll_into_view_if_needed()
    shot(page, "memory-ranks-01-two-gpus", full_page=False)
    page.uncheck("#mem-fit")
    wait_js(page, LABELS + ".includes('total')")
    assert "GPU rank 0" in page.evaluate(LABELS) and "GPU rank 1" in page.evaluate(LABELS)
    # A streamed sample with a third rank: a third line.
    event = {"seq": 1000, "t": 1_790_000_000.0 + 60.0, "type": "memory",
             **memory(60.0, [(0, 4.0), (1, 5.0), (2, 6.0)])[2]}
    page.evaluate("(data) => document.getElementById('job-live').dispatchEvent("
                  "new CustomEvent('htmx:sseMessage', {detail: {type: 'memory', data: data}}))",
                  json.dumps(event))
    wait_js(page, LABELS + ".includes('GPU rank 2')")
    watch.check()
    context.close()
