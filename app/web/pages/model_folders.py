"""The Models page's Add a local folder form, Remove and Convert for MLX (issue 15).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["models"])
