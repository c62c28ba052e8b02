"""The memory plan for a job body: checked as a submission would be (the same 422s), then
planned against this machine's budget. ``POST /api/plan`` and the new-job form's plan panel
both ask here."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.config import Settings
from app.errors import JobInputError
from app.hub.cache import downloads_allowed
from app.jobs.service import checked_params, method_spec, resolve_model
from app.planner.check import plan_job


def plan_for(session: Session, settings: Settings, backend: str, method: str, model: str,
             params: Any) -> dict[str, Any]:
    """The plan (verdict, breakdown, the first change that fits) with the full knobs."""
    spec = method_spec(backend, method)
    if spec.method in ("fuse", "convert", "download"):
        raise JobInputError("method", f"{spec.method} trains nothing: there is no plan to "
                            "make; use kto or sft")
    full = checked_params(spec, params)
    path = resolve_model(session, model, settings, must_be_here=False)  # it may say "missing"
    result = plan_job(path, backend, method, full)
    if result.get("model_missing"):  # refused at submit, unless workers may download it now
        result["model_missing"]["will_download"] = downloads_allowed(settings.allow_downloads)
    return {"backend": backend, "method": method, "model": model, "params": full, **result}
