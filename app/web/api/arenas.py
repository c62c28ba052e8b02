"""/api/arenas: the review arena over REST (app/arena/)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/arenas", tags=["arenas"])
