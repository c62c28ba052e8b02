"""The Feedback page over the API tier's app: the list with its filters and counts, flip
and delete (htmx, the page's CSRF header), and Make dataset from ticked rows or all that
match."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlmodel import Session, select

from app.models import DatasetEntry, Feedback
from contract.rows import load_kto_dataset

HX = {"HX-Request": "true"}


@pytest.fixture()
def rows(app):
    """Three ratings: two of an adapter (👍 and 👎, one a two-turn conversation), one of the
    base model (👎, from the arena)."""
    made = [
        Feedback(model="tiny-demo", variant="tiny-demo@job-7", job_id=7, adapter="/a",
                 messages=[{"role": "user", "content": "what is KTO?"}],
                 answer="A loss <b>for</b> preferences", label=True, note="clear"),
        Feedback(model="tiny-demo", variant="tiny-demo@job-7", job_id=7, adapter="/a",
                 messages=[{"role": "system", "content": "be brief"},
                           {"role": "user", "content": "first"},
                           {"role": "assistant", "content": "one"},
                           {"role": "user", "content": "and then?"}],
                 answer="no idea", label=False),
        Feedback(model="tiny-demo", variant="tiny-demo", messages=[
            {"role": "user", "content": "old question"}], answer="old answer", label=False,
            source="arena", created_at=datetime(2026, 1, 5, 12, tzinfo=UTC)),
    ]
    with Session(app.state.engine) as s:
        for row in made:
            s.add(row)
        s.commit()
        return [r.id for r in s.exec(select(Feedback).order_by(Feedback.id))]


def test_empty_page_says_how_to_rate(client):
    resp = client.get("/feedback")
    assert resp.status_code == 200
    assert "No feedback yet" in resp.text and 'href="/playground"' in resp.text
    assert 'aria-current="page"' in resp.text.split('href="/feedback"')[1][:30]


def test_list_filters_and_counts(client, rows):
    page = client.get("/feedback").text
    for id_ in rows:
        assert f'id="fb-row-{id_}"' in page
    assert "A loss &lt;b&gt;for&lt;/b&gt; preferences" in page  # escaped
    assert "and then?" in page and "4 messages" in page and "📝 clear" in page
    assert '<b data-count="total">3</b>' in page
    assert '<b data-count="desirable">1</b>' in page
    page = client.get("/feedback", params={"label": "false"}).text
    assert f'id="fb-row-{rows[0]}"' not in page and f'id="fb-row-{rows[1]}"' in page
    assert '<b data-count="total">2</b> ratings <span class="muted">of 3</span>' in page
    page = client.get("/feedback", params={"variant": "tiny-demo"}).text
    assert [i for i in rows if f'id="fb-row-{i}"' in page] == [rows[2]]
    page = client.get("/feedback", params={"from": "2026-01-05", "to": "2026-01-05"}).text
    assert [i for i in rows if f'id="fb-row-{i}"' in page] == [rows[2]]
    page = client.get("/feedback", params={"to": "2026-01-04"}).text
    assert "No feedback matches these filters" in page
    page = client.get("/feedback", params={"from": "yesterday"}).text
    assert "is not a date like 2026-11-30" in page and f'id="fb-row-{rows[0]}"' in page
    counts = client.get("/fragments/feedback/counts", params={"source": "arena"}).text
    assert '<b data-count="total">1</b>' in counts and "of 3" in counts


def test_flip_and_delete(app, client, rows):
    resp = client.post(f"/feedback/{rows[0]}/flip", headers=HX)
    assert resp.status_code == 200 and resp.headers["HX-Trigger"] == "feedback-changed"
    assert 'data-label="false"' in resp.text and "Flip to good" in resp.text
    with Session(app.state.engine) as s:
        assert s.get(Feedback, rows[0]).label is False
    resp = client.delete(f"/feedback/{rows[1]}", headers=HX)
    assert resp.status_code == 200 and resp.text == ""
    with Session(app.state.engine) as s:
        assert s.get(Feedback, rows[1]) is None
    # Gone meanwhile (another tab): the row just leaves.
    assert client.delete(f"/feedback/{rows[1]}", headers=HX).text == ""
    assert client.post(f"/feedback/{rows[1]}/flip", headers=HX).text == ""
    refused = client.post(f"/feedback/{rows[2]}/flip", headers={"X-CSRF-Token": ""})
    assert refused.status_code == 403


def test_make_dataset_from_ticked_rows_or_all(app, client, rows):
    resp = client.post("/feedback/dataset", headers=HX,
                       data={"name": "fb-ticked", "ids": [str(rows[0]), str(rows[2])]})
    assert resp.status_code == 200 and 'id="fb-made-ok"' in resp.text, resp.text
    assert 'href="/datasets/fb-ticked"' in resp.text
    assert "/jobs/new?dataset=fb-ticked&amp;model=tiny-demo&amp;init_adapter=7" in resp.text
    with Session(app.state.engine) as s:
        entry = s.get(DatasetEntry, "fb-ticked")
    assert [r["label"] for r in load_kto_dataset(entry.path)] == [True, False]

    resp = client.post("/feedback/dataset", headers=HX, data={
        "name": "fb-all", "all": "1", "label": "false", "merge_with": "demo-kto"})
    assert 'id="fb-made-ok"' in resp.text, resp.text
    with Session(app.state.engine) as s:
        entry = s.get(DatasetEntry, "fb-all")
    rows_out = load_kto_dataset(entry.path)
    assert len(rows_out) == 8 + 2 and sum(r["label"] for r in rows_out) == 4
    assert rows_out[8]["prompt"][0] == {"role": "system", "content": "be brief"}  # by id

    for data, message in (({"name": "x"}, "Tick the rows to use"),
                          ({"name": "fb-all", "all": "1"}, "exists"),
                          ({"name": "x", "all": "1", "source": "api"}, "no feedback matches"),
                          ({"name": "x", "all": "1", "merge_with": "nope"}, "does not exist")):
        resp = client.post("/feedback/dataset", headers=HX, data=data)
        assert resp.status_code == 200 and 'id="fb-made-error"' in resp.text, data
        assert message in resp.text, (data, resp.text)
    with Session(app.state.engine) as s:
        assert s.get(DatasetEntry, "x") is None
