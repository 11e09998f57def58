"""The event transport's guarantees, on the real Redis: ordered events, gaps detected, a request runs at most once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from herd import channels
from herd.api.events import EventStream
from herd.config import load_settings
from herd.errors import StreamBroken
from herd.inference import Finished, GenerationRequest, Started, TokenDelta, Usage
from herd.workers.bus import WorkerBus
from redis.asyncio import Redis

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


@pytest.fixture
async def redis_db(redis_port: int) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_port, db=13)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def test_a_request_is_claimed_at_most_once(redis_db: Redis) -> None:
    settings = load_settings({"HERD_MODELS": "m=/dev/null"})
    await redis_db.set(channels.request(REQUEST.id), msgspec.msgpack.encode(REQUEST))
    first = WorkerBus(settings, redis_db, "worker-a")
    second = WorkerBus(settings, redis_db, "worker-b")
    assert await first.claim(REQUEST.id, GenerationRequest) == REQUEST
    assert (
        await second.claim(REQUEST.id, GenerationRequest) is None
    )  # e.g. arq re-delivering the job of a killed worker
    assert await redis_db.get(channels.started(REQUEST.id)) == b"worker-a"


async def test_a_cancelled_request_is_never_claimed(redis_db: Redis) -> None:
    settings = load_settings({"HERD_MODELS": "m=/dev/null"})
    await redis_db.set(channels.request(REQUEST.id), msgspec.msgpack.encode(REQUEST))
    await redis_db.set(channels.cancelled(REQUEST.id), b"1")
    assert await WorkerBus(settings, redis_db, "worker-a").claim(REQUEST.id, GenerationRequest) is None
