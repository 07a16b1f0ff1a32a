"""``/v1/files``: upload a batch input file, list, read, download and delete files."""

from __future__ import annotations

from typing import Annotated, Any, AsyncIterator, Literal, Optional

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from ..deps import FilesDep

router = APIRouter(prefix="/v1/files", tags=["files"])

READ_BYTES = 1024 * 1024


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(READ_BYTES):
        yield chunk


@router.post("")
async def upload_file(file: UploadFile, purpose: Annotated[str, Form()], files: FilesDep) -> dict[str, Any]:
    return await files.upload(_chunks(file), file.filename or "", purpose)


@router.get("")
async def list_files(files: FilesDep, purpose: Optional[str] = None, limit: int = Query(10_000, ge=1, le=10_000),
                     after: Optional[str] = None, order: Literal["asc", "desc"] = "desc") -> dict[str, Any]:
    return await files.page(purpose, limit, after, order)


@router.get("/{file_id}")
async def get_file(file_id: str, files: FilesDep) -> dict[str, Any]:
    return await files.get(file_id)


@router.get("/{file_id}/content")
async def file_content(file_id: str, files: FilesDep) -> StreamingResponse:
    stored, chunks = await files.content(file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Length": str(stored.bytes),
                                      "Content-Disposition": f'attachment; filename="{stored.filename}"'})


@router.delete("/{file_id}")
async def delete_file(file_id: str, files: FilesDep) -> dict[str, Any]:
    return await files.delete(file_id)
