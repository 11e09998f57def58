"""The only Redis I/O in a worker: claim a request, publish its events, listen for cancels, heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
from arq.constants import in_progress_key_prefix
from herd import channels
from herd.config import Settings
from herd.inference import (
    EmbeddingRequest,
    Failed,
    Finished,
    GenerationRequest,
    RequestStats,
    StreamEvent,
    WorkerStatus,
)
from herd.redisconn import REDIS_ERRORS
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

log = logging.getLogger("herd.worker.bus")

R = TypeVar("R", GenerationRequest, EmbeddingRequest)

# KEYS: interactive queue, batch queue. ARGV: how many to move, now (ms), arq's in-progress key prefix.
# Batch lines move only while every job in the interactive queue is already running (arq keeps running jobs in
# the queue with an in-progress key): a waiting interactive request always goes first. Atomic, so two workers
# polling at once cannot both see the queue empty and overfill it.
_PROMOTE = """
local jobs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
for _, id in ipairs(jobs) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then return 0 end
end
local moved = redis.call('ZPOPMIN', KEYS[2], ARGV[1])
for i = 1, #moved, 2 do redis.call('ZADD', KEYS[1], ARGV[2], moved[i]) end
return #moved / 2
"""


class WorkerBus:
    def __init__(self, settings: Settings, redis: Redis, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self._redis = redis
        self._pending: list[tuple[str | bytes | int, ...]] = []  # commands for the publisher's next write
        self._durable: dict[str, int] = {}  # durable request id -> its choices still running
        self._stats: list[RequestStats] = []
        self._wake = asyncio.Event()
        self._encoder = msgspec.msgpack.Encoder()
        self._tasks: list[asyncio.Task[None]] = []
        self._promote = redis.register_script(_PROMOTE)

    # ---- requests ----------------------------------------------------------------------------------

    async def claim(self, request_id: str, kind: type[R]) -> R | None:
        """The request to run, or None when it must not run: cancelled, expired, or already started once."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(channels.started(request_id), self.worker_id.encode(), nx=True, ex=self.settings.request_ttl_s)
            pipe.get(channels.request(request_id))
            pipe.exists(channels.cancelled(request_id))
            first_start, raw, cancelled = await pipe.execute()
        if not first_start:
            log.warning("request %s was delivered again after a start; not running it twice", request_id)
            return None
        if raw is None or cancelled:
            return None
        request = msgspec.msgpack.decode(raw, type=kind)
        if isinstance(request, GenerationRequest) and request.durable:
            self._durable[request_id] = request.n
        return request

    async def forget(self, request_id: str) -> None:
        """Drop a request's record once its job ended, however it ended (a refused prompt may be megabytes)."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.delete(channels.request(request_id))

    async def promote_batch_lines(self, model: str, n: int) -> int:
        """Move up to n batch-line jobs into the model's interactive queue, if no interactive job waits there."""
        keys = [channels.queue(model), channels.batch_queue(model)]
        try:
            moved = await self._promote(keys, [n, int(time.time() * 1000), in_progress_key_prefix])
        except REDIS_ERRORS as exc:
            log.warning("could not take batch lines: %s", exc)
            return 0
        return int(moved)

    # ---- events ------------------------------------------------------------------------------------

    def emit(self, events: list[tuple[str, StreamEvent]], stats: list[RequestStats]) -> None:
        """Called on the event loop once per decode step; the publisher task sends everything in one pipeline."""
        for rid, ev in events:
            payload = self._encoder.encode(ev)
            self._pending.append(("PUBLISH", channels.events(rid), payload))
            if rid in self._durable:
                self._append_durable(rid, ev, payload)
        self._stats.extend(stats)
        self._wake.set()

    def _append_durable(self, rid: str, event: StreamEvent, payload: bytes) -> None:
        """A durable request's events also go to its Redis Stream, written here rather than by the API process that
        queued it, so a reader on any replica sees them all even after that process died (api/responses/)."""
        key = channels.durable_events(rid)
        cap, ttl_ms = channels.DURABLE_EVENTS_MAXLEN, self.settings.responses_ttl * 1000
        self._pending.append(("XADD", key, "MAXLEN", "~", cap, "*", "e", payload))
        self._pending.append(("PEXPIRE", key, ttl_ms))
        if isinstance(event, Finished | Failed):
            self._durable[rid] -= 1 if isinstance(event, Finished) else self._durable[rid]
            if self._durable[rid] <= 0:
                del self._durable[rid]

    async def _publisher(self) -> None:
        """Sends each decode step's events as one write of pipelined PUBLISH commands on a connection of its own,
        without waiting for the replies (a reader drains them): per token this costs a write, not a round trip."""
        pool = self._redis.connection_pool
        while True:
            conn = pool.connection_class(**pool.connection_kwargs)
            drain: asyncio.Task[None] | None = None
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                drain = asyncio.create_task(_drain_replies(conn))
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    pending, stats = self._pending, self._stats
                    self._pending, self._stats = [], []
                    if pending:
                        await conn.send_packed_command(conn.pack_commands(pending), check_health=False)
                    if stats:
                        await self._store_stats(stats)
                    if drain.done():
                        drain.result()  # the connection broke: raise its error here
            except REDIS_ERRORS as exc:
                # Events in flight are lost: the API sees the gap in sequence numbers, or the silent worker.
                log.error("event publisher lost Redis: %s", exc)
                await asyncio.sleep(0.5)
            finally:
                if drain is not None:
                    drain.cancel()
                await conn.disconnect()

    async def _store_stats(self, stats: list[RequestStats]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in stats:
                pipe.set(channels.stats(item.request_id), msgspec.json.encode(item), ex=self.settings.request_ttl_s)
                pipe.delete(channels.request(item.request_id))
            await pipe.execute()

    # ---- cancels and heartbeats ----------------------------------------------------------------------

    async def _listener(self, model: str, on_message: Callable[[str, str], None]) -> None:
        """Cancels and job announcements (request ids both) from the API."""
        kinds = {channels.CANCEL_CHANNEL.encode(): "cancel", channels.announce(model).encode(): "announce"}
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*kinds)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        on_message(kinds[message["channel"]], message["data"].decode())
            except REDIS_ERRORS as exc:
                log.warning("listener lost Redis: %s", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _heartbeat(self, status: Callable[[], WorkerStatus]) -> None:
        ttl_ms = int(self.settings.heartbeat_ttl_s * 1000)
        while True:
            try:
                await self._redis.set(channels.worker(self.worker_id), msgspec.json.encode(status()), px=ttl_ms)
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    def start(self, model: str, on_message: Callable[[str, str], None], status: Callable[[], WorkerStatus]) -> None:
        self._tasks = [
            asyncio.create_task(self._publisher(), name="herd-publisher"),
            asyncio.create_task(self._listener(model, on_message), name="herd-listener"),
            asyncio.create_task(self._heartbeat(status), name="herd-heartbeat"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.delete(channels.worker(self.worker_id))


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000) % 100000}"


async def _drain_replies(conn: AbstractConnection) -> None:
    while True:
        await conn.read_response()
