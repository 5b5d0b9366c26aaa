"""FileStore: OpenAI-style files (batch input, batch output/errors), kept in Redis.

A file is one hash `genq:file:{id}` (metadata fields + `content`), expiring after
GENQ_FILE_RETENTION_S (default 7 days). Uploads are capped by GENQ_MAX_FILE_BYTES (default
32 MiB): Redis holds them in memory, which is fine for batch inputs of up to
GENQ_BATCH_MAX_LINES requests; larger archives belong in object storage.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from common import keys
from common.errors import Forbidden, NotFound

_META = ("id", "bytes", "created_at", "filename", "purpose", "owner")


def new_file_id() -> str:
    return "file-" + uuid.uuid4().hex


def file_fields(
    file_id: str, owner: str, filename: str, purpose: str, content: bytes
) -> dict[str, Any]:
    return {
        "id": file_id,
        "bytes": len(content),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "owner": owner,
        "content": content,
    }


def file_object(meta: dict[str, str]) -> dict[str, Any]:
    """OpenAI's File object."""
    return {
        "id": meta["id"],
        "object": "file",
        "bytes": int(meta["bytes"]),
        "created_at": int(meta["created_at"]),
        "filename": meta["filename"],
        "purpose": meta["purpose"],
        "status": "processed",
        "status_details": None,
    }


class FileStore:
    def __init__(self, redis: aioredis.Redis, retention_s: int):
        self.redis = redis
        self.retention_s = retention_s

    async def create(
        self, owner: str, filename: str, purpose: str, content: bytes
    ) -> dict[str, Any]:
        fid = new_file_id()
        fields = file_fields(fid, owner, filename, purpose, content)
        pipe = self.redis.pipeline(transaction=True)
        self.add_to(pipe, fields)
        await pipe.execute()
        return file_object({k: str(v) for k, v in fields.items() if k != "content"})

    def add_to(self, pipe: Any, fields: dict[str, Any]) -> None:
        """Queue a file's writes on a pipeline (batch finalisation writes files atomically)."""
        pipe.hset(keys.file(fields["id"]), mapping=fields)
        pipe.expire(keys.file(fields["id"]), self.retention_s)
        pipe.zadd(keys.owner_files(fields["owner"]), {fields["id"]: float(fields["created_at"])})

    async def meta(self, file_id: str, owner: str | None = None) -> dict[str, str]:
        """A file's metadata; NotFound, or Forbidden when `owner` is given and differs."""
        vals = await self.redis.hmget(keys.file(file_id), *_META)
        if vals[0] is None:
            raise NotFound(f"file '{file_id}' not found", param="file_id")
        meta = {k: _s(v) for k, v in zip(_META, vals, strict=True) if v is not None}
        if owner is not None and meta.get("owner") != owner:
            raise Forbidden("this file belongs to another API key")
        return meta

    async def content(self, file_id: str) -> bytes:
        data = await self.redis.hget(keys.file(file_id), "content")
        if data is None:
            raise NotFound(f"file '{file_id}' not found", param="file_id")
        return data if isinstance(data, bytes) else str(data).encode()

    async def list(self, owner: str, limit: int, purpose: str | None) -> list[dict[str, Any]]:
        ids = await self.redis.zrevrange(keys.owner_files(owner), 0, -1)
        out: list[dict[str, Any]] = []
        for raw in ids:
            try:
                meta = await self.meta(_s(raw))
            except NotFound:
                await self.redis.zrem(keys.owner_files(owner), _s(raw))  # expired
                continue
            if purpose and meta["purpose"] != purpose:
                continue
            out.append(file_object(meta))
            if len(out) >= limit:
                break
        return out

    async def delete(self, file_id: str, owner: str) -> None:
        await self.meta(file_id, owner)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.file(file_id))
        pipe.zrem(keys.owner_files(owner), file_id)
        await pipe.execute()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
