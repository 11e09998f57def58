"""api/events.py's EventStream: ordered events end with Finished, a gap in sequence numbers is an error (a request's
claim, at most once, is tested with the bus in tests/test_bus.py)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from herd.api.events import EventStream
from herd.errors import StreamBroken
from herd.inference import Finished, GenerationRequest, Started, TokenDelta, Usage

REQUEST = GenerationRequest(id="req-1", model="m", prompt="hi")


class _Upstream:
    """The Upstream of a stream whose events keep coming: never asked about progress, released at the end."""

    def __init__(self) -> None:
        self.released = 0

    async def check_progress(self, stream: EventStream) -> None:
        raise AssertionError("events keep coming: nobody should ask whether the request is still running")

    async def release(self, stream: EventStream) -> None:
        self.released += 1


def _stream(queue: asyncio.Queue[bytes]) -> EventStream:
    return EventStream(_Upstream(), REQUEST, queue, heartbeat_s=5.0, wait_timeout_s=5.0)


def test_gap_in_sequence_numbers_is_an_error() -> None:
    async def run() -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        stream = _stream(queue)
        queue.put_nowait(msgspec.msgpack.encode(Started(0, "w", 3)))
        queue.put_nowait(msgspec.msgpack.encode(TokenDelta(1, "a", 1)))
        queue.put_nowait(msgspec.msgpack.encode(TokenDelta(3, "c", 1)))  # 2 went missing
        await stream.start()
        assert await stream.next() == TokenDelta(1, "a", 1)
        with pytest.raises(StreamBroken):
            await stream.next()

    asyncio.run(run())


def test_in_order_events_end_with_finished() -> None:
    async def run() -> list[object]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        stream = _stream(queue)
        for event in (Started(0, "w", 3), TokenDelta(1, "a", 1), Finished(2, "stop", Usage(3, 1))):
            queue.put_nowait(msgspec.msgpack.encode(event))
        await stream.start()
        return [event async for event in stream.deltas()]

    events = asyncio.run(run())
    assert events == [TokenDelta(1, "a", 1), Finished(2, "stop", Usage(3, 1))]
