"""The page's files and the URLs they are served at.

No FastAPI here: ``api.security`` reads :func:`public_paths` to let exactly these URLs through
without an API key (the page must load before it can ask for one; the data it fetches needs one).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")
PAGE_PATH = "/"
ASSET_PREFIX = "/web/"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


@lru_cache(maxsize=1)
def asset_files() -> dict[str, Path]:
    """File name → path for every servable file in ``static/`` (read once: the files ship with the code)."""
    return {p.name: p for p in sorted(STATIC_DIR.iterdir()) if p.is_file() and p.suffix in MEDIA_TYPES}


def public_paths() -> frozenset[str]:
    """The page (``/``) and each of its files (``/web/<name>``): nothing else under ``/web/``."""
    return frozenset({PAGE_PATH} | {ASSET_PREFIX + name for name in asset_files()})
