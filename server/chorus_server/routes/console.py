"""The browser console at `/` (static files from `chorus_server.console`, served from the package: no CDN)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from chorus_server.console import STATIC_DIR

router = APIRouter(include_in_schema=False)

# Everything the page loads comes from this server; the microphone socket and object URLs of chosen files too.
POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob:; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@router.get("/")
def console() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": POLICY})


def install_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=STATIC_DIR), name="console")
