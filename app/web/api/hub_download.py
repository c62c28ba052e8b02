"""POST /api/models/download: a hub model downloaded by a job (issue 15). Owner: the download
work.
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["models"])
