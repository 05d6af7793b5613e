"""The browser console: static files (no build step, no CDN) served by the app at `/` and `/console/`."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
