"""The Models page's Add model form and a download's progress fragment (issue 15).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["models"])
