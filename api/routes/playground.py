"""GET /playground: one self-contained page (no CDN, no build step) to chat with a model."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["playground"])


@lru_cache(maxsize=1)
def _page() -> str:
    return resources.files("api.static").joinpath("playground.html").read_text(encoding="utf-8")


@router.get("/playground", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The page itself is public; every call it makes sends the API key typed into it."""
    return HTMLResponse(
        _page(),
        headers={
            # Everything is inline; nothing may be loaded from elsewhere.
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; img-src 'self' data:",
            "Cache-Control": "no-cache",
        },
    )
