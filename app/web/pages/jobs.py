"""The jobs list: the filtered, sorted, paged table (the URL holds the query) and the body
fragment that re-fetches itself. The query logic is app/jobs/history.py; one job's page is
app/web/pages/job.py, the new-job form app/web/pages/new_job.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from app.jobs import history as runs
from app.jobs.sparkline import loss_series, sparkline
from app.models import JobStatus
from app.web.deps import SessionDep
from app.web.templating import page

router = APIRouter(include_in_schema=False)
JOBS_PER_PAGE = 25


def jobs_context(request: Request, session: Session) -> dict[str, Any]:
    """The filtered, sorted page of jobs the URL asks for, with sparklines."""
    query, page_no = runs.query_from_params(dict(request.query_params), JOBS_PER_PAGE)
    found = runs.find_jobs(session, query)
    last = max(1, -(-found.total // JOBS_PER_PAGE))
    if page_no > last:  # runs deleted (or a stale link): show the last page there is
        page_no = last
        query = replace(query, offset=(last - 1) * JOBS_PER_PAGE)
        found = runs.find_jobs(session, query)
    series = loss_series(session, [r.job.id for r in found.rows])
    for row in found.rows:
        row.spark = sparkline(series.get(row.job.id, []))
    return {"found": found, "query": query, "page_no": page_no, "pages": last,
            "url_params": runs.url_params, "urlencode": urlencode}


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    return page(request, "jobs.html", facets=runs.facets(session), statuses=list(JobStatus),
                **jobs_context(request, session))


@router.get("/fragments/jobs", response_class=HTMLResponse)
def jobs_fragment(request: Request, session: SessionDep) -> HTMLResponse:
    """The table body for the same URL query; it re-fetches itself every 3 s."""
    return page(request, "_jobs_body.html", **jobs_context(request, session))
