"""OpenAI-compatible Files and Batches routes (the Batch API); see api/batches.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from common.errors import InvalidRequest, PayloadTooLarge

from ..batches import BatchStore
from ..deps import Caller, CallerDep, SettingsDep
from ..files import FileStore

router = APIRouter(prefix="/v1", tags=["batches"])


async def get_files(request: Request) -> FileStore:
    return request.app.state.files  # type: ignore[no-any-return]


async def get_batches(request: Request) -> BatchStore:
    return request.app.state.batches  # type: ignore[no-any-return]


FilesDep = Annotated[FileStore, Depends(get_files)]
BatchesDep = Annotated[BatchStore, Depends(get_batches)]


def _owner(caller: Caller) -> str | None:
    """Admins see every owner's files and batches; others only their own."""
    return None if caller.admin else caller.owner


@router.post("/files")
async def upload_file(
    request: Request, caller: CallerDep, files: FilesDep, settings: SettingsDep
) -> dict[str, Any]:
    """multipart/form-data with `file` (JSONL) and `purpose` ('batch')."""
    form = await request.form(max_part_size=settings.max_file_bytes)
    purpose = form.get("purpose")
    upload = form.get("file")
    if purpose != "batch":
        raise InvalidRequest("purpose must be 'batch'", param="purpose")
    if upload is None or isinstance(upload, str):
        raise InvalidRequest("a multipart 'file' part is required", param="file")
    content = await upload.read()
    if len(content) > settings.max_file_bytes:
        raise PayloadTooLarge(f"files are limited to {settings.max_file_bytes} bytes")
    return await files.create(caller.owner, upload.filename or "upload.jsonl", purpose, content)


@router.get("/files")
async def list_files(
    caller: CallerDep,
    files: FilesDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    return {"object": "list", "data": await files.list(caller.owner, limit, purpose)}


@router.get("/files/{file_id}")
async def get_file(file_id: str, caller: CallerDep, files: FilesDep) -> dict[str, Any]:
    from ..files import file_object

    return file_object(await files.meta(file_id, _owner(caller)))


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, caller: CallerDep, files: FilesDep) -> Response:
    await files.meta(file_id, _owner(caller))
    return Response(await files.content(file_id), media_type="application/jsonl")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, caller: CallerDep, files: FilesDep) -> dict[str, Any]:
    meta = await files.meta(file_id, _owner(caller))
    await files.delete(file_id, meta["owner"])
    return {"id": file_id, "object": "file", "deleted": True}


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=128)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16)


@router.post("/batches")
async def create_batch(body: BatchCreate, caller: CallerDep, batches: BatchesDep) -> dict[str, Any]:
    return await batches.create(
        caller.owner, body.input_file_id, body.endpoint, body.completion_window, body.metadata
    )


@router.get("/batches")
async def list_batches(
    caller: CallerDep,
    batches: BatchesDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    return await batches.list(caller.owner, limit, after)


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, caller: CallerDep, batches: BatchesDep) -> dict[str, Any]:
    from ..batches import batch_object

    return batch_object(await batches.get(batch_id, _owner(caller)))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, caller: CallerDep, batches: BatchesDep) -> dict[str, Any]:
    return await batches.cancel(batch_id, _owner(caller))
