"""HTML pages and the fragments htmx swaps (placeholder until the pages land)."""

from fastapi import APIRouter

router = APIRouter()
