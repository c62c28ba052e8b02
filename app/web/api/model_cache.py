"""The Hugging Face cache and the seed guide's suggested models: GET /api/models/suggested, GET
/api/models/cache, DELETE /api/models/cache/{repo_id} (issue 15).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["models"])
