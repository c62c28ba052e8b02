"""Your own folders and MLX conversion: POST /api/models, DELETE /api/models/{id}, POST
/api/models/{id}/convert (issue 15).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["models"])
