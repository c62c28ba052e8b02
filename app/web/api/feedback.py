"""/api/feedback: rated answers over REST (app/feedback/)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/feedback", tags=["feedback"])
