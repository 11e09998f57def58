"""Stored responses in Redis: records owned by the principal that created them, leases on running background
responses, and the durable event streams workers append to (channels.durable_events).

A record is a hash (channels.response): owner, status, the Response and its input items as JSON (opaque bytes
here: the routes and translate/ give them their shape), the previous response's id and the id of the generation.
A terminal status is final: `settle` changes a record only while it is not terminal, atomically, so a cancel, the
runner's own end and a reader settling an orphaned response cannot overwrite each other.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec
from herd import channels
from herd.api.leases import Leases
from herd.config import Settings
from herd.errors import InvalidRequest, NotFound, Unavailable
from herd.inference import Failed, Finished, StreamEvent
from herd.redisconn import map_redis_errors
from redis.asyncio import Redis

TERMINAL = ("completed", "failed", "cancelled", "incomplete")

# KEYS: record. ARGV: status, response JSON, ttl s. Returns 1 when the record changed, 0 when it was already
# terminal (or gone).
_SETTLE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' or status == 'incomplete' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'response', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class Record(msgspec.Struct):
    owner: str
    status: str
    response: bytes  # the Response, JSON
    input: bytes  # its input items, a JSON list
    previous: str  # "" for none
    request_id: str  # the generation's id: its durable events are channels.durable_events(request_id)
    background: bool
    logprobs: bool = False  # the request included message.output_text.logprobs (a replay must show them too)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class ResponseStore:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._ttl = settings.responses_ttl
        self.max_bytes = settings.responses_max_bytes  # one stored response, input and output
        self._lease_ms = max(1000, int(settings.heartbeat_ttl_s * 1000))
        self._settle = redis.register_script(_SETTLE)
        self._leases = Leases(redis)
        self._decoder = msgspec.msgpack.Decoder(StreamEvent)

    # ---- records -------------------------------------------------------------------------------------------

    def check(self, record: Record) -> None:
        """Refuse, before anything runs, an input too large to store (the output is kept within the bound by
        translate's `stored`, which drops logprobs first)."""
        size = len(record.input)
        if size > self.max_bytes:
            raise InvalidRequest(
                f"the input is too large to store ({size} bytes; at most {self.max_bytes}); send store: false",
                param="input",
            )

    async def create(self, response_id: str, record: Record) -> None:
        fields = {
            "owner": record.owner,
            "status": record.status,
            "response": record.response,
            "input": record.input,
            "previous": record.previous,
            "request_id": record.request_id,
            "background": "1" if record.background else "0",
            "logprobs": "1" if record.logprobs else "0",
        }
        async with map_redis_errors(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(channels.response(response_id), mapping=fields)
            pipe.expire(channels.response(response_id), self._ttl)
            await pipe.execute()

    async def get(self, owner: str, response_id: str) -> Record:
        """The caller's response; NotFound for a missing one and for someone else's alike."""
        with map_redis_errors():
            raw = await self._redis.hgetall(channels.response(response_id))  # type: ignore[misc]
        if not raw or raw.get(b"owner", b"").decode() != owner:
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        return Record(
            owner=owner,
            status=raw[b"status"].decode(),
            response=raw[b"response"],
            input=raw[b"input"],
            previous=raw.get(b"previous", b"").decode(),
            request_id=raw.get(b"request_id", b"").decode(),
            background=raw.get(b"background") == b"1",
            logprobs=raw.get(b"logprobs") == b"1",
        )

    async def status(self, response_id: str) -> str | None:
        with map_redis_errors():
            raw = await self._redis.hget(channels.response(response_id), "status")  # type: ignore[misc]
        return raw.decode() if raw else None

    async def settle(self, response_id: str, status: str, response: bytes) -> bool:
        """Record a new status and Response unless the record already ended; True when it changed."""
        with map_redis_errors():
            changed = await self._settle(keys=[channels.response(response_id)], args=[status, response, self._ttl])
        return bool(changed)

    async def retarget(self, response_id: str, request_id: str) -> None:
        """The response's generation is now `request_id` (truncation auto queued a shorter prompt)."""
        with map_redis_errors():
            await self._redis.hset(channels.response(response_id), "request_id", request_id)  # type: ignore[misc]

    async def request_id(self, response_id: str) -> str | None:
        with map_redis_errors():
            raw = await self._redis.hget(channels.response(response_id), "request_id")  # type: ignore[misc]
        return raw.decode() if raw else None

    async def delete(self, owner: str, response_id: str) -> Record:
        record = await self.get(owner, response_id)
        async with map_redis_errors(), self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(channels.response(response_id), channels.response_lease(response_id))
            if record.request_id:
                pipe.delete(channels.durable_events(record.request_id))
            await pipe.execute()
        return record

    # ---- leases: which API process runs a background response ---------------------------------------------

    async def lease(self, response_id: str, token: str) -> None:
        await self._leases.take(channels.response_lease(response_id), token, self._lease_ms, only_if_free=False)

    async def renew(self, response_id: str, token: str) -> bool:
        return await self._leases.renew(channels.response_lease(response_id), token, self._lease_ms)

    async def release(self, response_id: str, token: str) -> None:
        await self._leases.release(channels.response_lease(response_id), token)

    async def leased(self, response_id: str) -> bool:
        return await self._leases.held(channels.response_lease(response_id))

    async def worker_state(self, request_id: str) -> str:
        """Where the generation stands, from what workers leave in Redis: `running` (a live worker took it),
        `lost` (the worker that took it stopped heartbeating) or `waiting` (no worker took it yet)."""
        with map_redis_errors():
            started = await self._redis.get(channels.started(request_id))
            if started is None:
                return "waiting"
            alive = await self._redis.exists(channels.worker(started.decode()))
        return "running" if alive else "lost"

    # ---- durable events --------------------------------------------------------------------------------------

    async def events(self, request_id: str) -> list[StreamEvent]:
        """Every event of the generation so far (the stream may not exist yet: no worker took it)."""
        with map_redis_errors():
            entries = await self._redis.xrange(channels.durable_events(request_id))
        return [self._decoder.decode(fields[b"e"]) for _, fields in entries]

    async def follow(self, request_id: str, block_ms: int) -> AsyncIterator[StreamEvent | None]:
        """The generation's events from the first, then live as the worker appends them, up to its last one.
        Yields None each time `block_ms` passed without an event, so the caller can look at the record."""
        key = channels.durable_events(request_id)
        last = b"0-0"
        seq = 0
        while True:
            with map_redis_errors():
                found = await self._redis.xread({key: last}, count=512, block=block_ms)
            if not found:
                yield None
                continue
            for entry_id, fields in found[0][1]:
                last = entry_id
                event = self._decoder.decode(fields[b"e"])
                if event.seq != seq:  # trimmed or lost: a replay with a hole would be a lie
                    yield Failed(seq, Unavailable.kind, f"event {seq} of the response is no longer stored")
                    return
                seq += 1
                yield event
                if isinstance(event, Finished | Failed):
                    return


def new_lease_token() -> str:
    return f"{time.time_ns():x}"
