"""What the ``/v1/files`` routes call: files for batches (input) and from them (output, errors)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from tasks.contract.errors import JobError, invalid_request
from tasks.contract.settings import Settings
from tasks.queue.files import FileStore, FileTooLarge, StoredFile

# What may be uploaded here: input files for /v1/batches. Outputs are made here (`batch_output`).
UPLOAD_PURPOSES = ("batch",)


def file_view(f: StoredFile) -> dict[str, Any]:
    """The OpenAI file object."""
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": "processed", "expires_at": None, "status_details": None}


class Files:
    def __init__(self, store: FileStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def upload(self, chunks: AsyncIterator[bytes], filename: str, purpose: str) -> dict[str, Any]:
        if purpose not in UPLOAD_PURPOSES:
            raise invalid_request(f"Files with purpose `{purpose}` are not accepted by this server; the purpose it "
                                  "takes is `batch` (input files for /v1/batches).", param="purpose",
                                  code="invalid_value")
        limit = self.settings.max_file_bytes
        try:
            stored = await self.store.put(chunks, filename=filename or "file", purpose=purpose, limit=limit)
        except FileTooLarge:
            raise JobError(f"The file is larger than {limit} bytes (LLMHOST_MAX_FILE_BYTES).", status_code=413,
                           code="file_too_large", param="file") from None
        return file_view(stored)

    async def _stored(self, file_id: str) -> StoredFile:
        stored = await self.store.get(file_id)
        if stored is None:
            raise JobError(f"No file with id `{file_id}`.", status_code=404, code="file_not_found", param="file_id")
        return stored

    async def get(self, file_id: str) -> dict[str, Any]:
        return file_view(await self._stored(file_id))

    async def page(self, purpose: Optional[str], limit: int, after: Optional[str], order: str) -> dict[str, Any]:
        rows, more = await self.store.page(purpose=purpose, limit=limit, after=after, newest_first=order == "desc")
        data = [file_view(f) for f in rows]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    async def content(self, file_id: str) -> tuple[StoredFile, AsyncIterator[bytes]]:
        stored = await self._stored(file_id)
        return stored, self.store.chunks(file_id)

    async def delete(self, file_id: str) -> dict[str, Any]:
        if not await self.store.delete(file_id):
            raise JobError(f"No file with id `{file_id}`.", status_code=404, code="file_not_found", param="file_id")
        return {"id": file_id, "object": "file", "deleted": True}
