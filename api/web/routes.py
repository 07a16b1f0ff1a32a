"""The page at ``/``, its files at ``/web/<name>``, and the status JSON it polls."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from tasks.contract.errors import JobError

from ..deps import BatchesDep, GatewayDep
from .assets import ASSET_PREFIX, MEDIA_TYPES, PAGE_PATH, asset_files
from .status import StatusResponse, fleet_status

router = APIRouter()

# The files change with the code, not per request: revalidate (ETag) rather than cache blindly.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
# Defence in depth behind the renderer's text-only DOM: no inline script runs, and the page can load
# or call nothing but this server (the icon is an empty data: URL).
_PAGE_HEADERS = {**_HEADERS, "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                 "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"}


def _serve(name: str, headers: dict[str, str] = _HEADERS) -> FileResponse:
    path = asset_files().get(name)
    if path is None:
        raise JobError(f"The web page has no file `{name}`.", status_code=404, type="not_found_error",
                       code="not_found")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=headers)


@router.get(PAGE_PATH, include_in_schema=False)
async def page() -> FileResponse:
    return _serve("index.html", _PAGE_HEADERS)


@router.get(ASSET_PREFIX + "{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    return _serve(name)


@router.get("/v1/status", tags=["status"])
async def status(gw: GatewayDep, batches: BatchesDep) -> StatusResponse:
    return await fleet_status(gw, batches)
