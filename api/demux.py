"""One pub/sub connection per API process, shared by every in-flight request: events arrive per request channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.exceptions
from herd.errors import Unavailable
from herd.redisconn import REDIS_ERRORS, UNREACHABLE
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

log = logging.getLogger("herd.api.demux")

LOST = b""  # put on a request's queue when the pub/sub connection dropped: events may have been missed


class Demux:
    """One pub/sub connection per API process, shared by every in-flight request.

    A subscription counts only once Redis confirmed it, so an event published after `subscribe` returns
    cannot be missed.
    """

    def __init__(self, redis: Redis, control_channel: str) -> None:
        self._redis = redis
        self._control = control_channel.encode()
        self._queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herd-demux")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def subscribe(self, channel: str) -> asyncio.Queue[bytes]:
        try:
            async with asyncio.timeout(5):
                await self._connected.wait()
                assert self._pubsub is not None
                key = channel.encode()
                queue: asyncio.Queue[bytes] = asyncio.Queue()
                confirmed = asyncio.get_running_loop().create_future()
                self._queues[key] = queue
                self._confirmations[key] = confirmed
                await self._pubsub.subscribe(key)
                await confirmed
                return queue
        except (TimeoutError, *REDIS_ERRORS) as exc:
            self._queues.pop(channel.encode(), None)
            raise Unavailable(UNREACHABLE) from exc

    async def unsubscribe(self, channel: str) -> None:
        key = channel.encode()
        if self._queues.pop(key, None) is not None and self._pubsub is not None and self._connected.is_set():
            with contextlib.suppress(*REDIS_ERRORS):
                await self._pubsub.unsubscribe(key)

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._control)
                self._pubsub = pubsub
                self._connected.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except REDIS_ERRORS as exc:
                log.warning("pub/sub connection lost: %s", exc)
            finally:
                self._connected.clear()
                self._pubsub = None
                for queue in self._queues.values():
                    queue.put_nowait(LOST)
                self._queues.clear()
                for confirmed in self._confirmations.values():
                    if not confirmed.done():
                        confirmed.set_exception(redis.exceptions.ConnectionError("pub/sub connection lost"))
                self._confirmations.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.5)

    def _dispatch(self, message: dict[str, object]) -> None:
        channel = message["channel"]
        assert isinstance(channel, bytes)
        if message["type"] == "message":
            queue = self._queues.get(channel)
            if queue is not None:
                data = message["data"]
                assert isinstance(data, bytes)
                queue.put_nowait(data)
        elif message["type"] == "subscribe":
            confirmed = self._confirmations.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
