"""SSE framing and keepalive (in-process: no Redis needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from api.relay import DeltaEvent, StreamEvent
from api.sse import KEEPALIVE, encode


async def _slow() -> AsyncIterator[StreamEvent]:
    yield DeltaEvent(0, '{"seq":0,"text":"a"}')
    await asyncio.sleep(0.35)
    yield DeltaEvent(1, '{"seq":1,"text":"b"}')


async def test_keepalive_comments_fill_silence_and_events_keep_order() -> None:
    out = [frame async for frame in encode(_slow(), ndjson=False, keepalive_s=0.1)]
    assert out[0].startswith("id: 0\nevent: delta\n") and out[-1].startswith("id: 1\n")
    assert 2 <= out.count(KEEPALIVE) <= 4
    assert all(f == KEEPALIVE for f in out[1:-1])


async def test_ndjson_gets_no_keepalive_lines() -> None:
    out = [frame async for frame in encode(_slow(), ndjson=True, keepalive_s=0.1)]
    assert out == ['{"seq":0,"text":"a"}\n', '{"seq":1,"text":"b"}\n']
