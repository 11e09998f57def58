"""Resumable answers of the UI message stream (useChat's `resume: true`): which generation a chat's answer is, so a
reconnect on any API replica replays it from the durable event log the Responses API keeps (the worker appends every
event to channels.durable_events; ResponseStore.follow reads it) and then follows it live.

A chat's record (channels.ui_chat) lives from the POST that starts an answer until a client has read that answer to
its finish. A client that goes away mid-answer leaves it behind, and its generation runs on: the POST's process
drains the events in a task (so the request's accounting ends as usual), and the worker appends them to the log
whether or not that process lives. Stopping such an answer is an explicit DELETE (the AI SDK's abort cannot be told
from a reload), which routes/ui_chat.py turns into the gateway's cancel.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from herd import channels
from herd.api.events import EventStream
from herd.api.relay import close_shielded
from herd.config import Settings
from herd.errors import ServiceError
from herd.redisconn import map_redis_errors
from herd.toolparams import Signature, signatures
from redis.asyncio import Redis

# KEYS: the chat's record. ARGV: a request id. Deletes the record only while it still names that generation (a newer
# answer of the same chat keeps its own).
_END = """
local current = redis.call('HGET', KEYS[1], 'request_id')
if current == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Answer(msgspec.Struct, frozen=True):
    """What a reader needs to replay a chat's answer exactly as its POST streamed it."""

    request_id: str  # the generation: its events are channels.durable_events(request_id)
    message_id: str
    model: str
    tools: bool  # the request had tools: the text is parsed for calls
    # The offered tools' (name, parameters schema as JSON text): their parameter types read non-JSON calls back.
    schemas: tuple[tuple[str, str], ...] = ()

    def signatures(self) -> dict[str, Signature]:
        return signatures(self.schemas)


class ChatStreams:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._ttl = settings.responses_ttl
        self._end = redis.register_script(_END)
        self._drains: set[asyncio.Task[None]] = set()

    async def begin(self, owner: str, chat_id: str, answer: Answer) -> None:
        key = channels.ui_chat(owner, chat_id)
        fields = {
            "request_id": answer.request_id,
            "message_id": answer.message_id,
            "model": answer.model,
            "tools": "1" if answer.tools else "0",
            "schemas": msgspec.json.encode(answer.schemas),
        }
        async with map_redis_errors(), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._ttl)
            await pipe.execute()

    async def active(self, owner: str, chat_id: str) -> Answer | None:
        """The chat's answer not yet read to its end, if any."""
        with map_redis_errors():
            raw = await self._redis.hgetall(channels.ui_chat(owner, chat_id))  # type: ignore[misc]
        if not raw or b"request_id" not in raw:
            return None
        return Answer(
            request_id=raw[b"request_id"].decode(),
            message_id=raw.get(b"message_id", b"").decode(),
            model=raw.get(b"model", b"").decode(),
            tools=raw.get(b"tools") == b"1",
            schemas=_schemas(raw.get(b"schemas")),
        )

    async def end(self, owner: str, chat_id: str, request_id: str) -> None:
        """A client read the answer to its finish (or stopped it): nothing is left to resume."""
        with map_redis_errors():
            await self._end(keys=[channels.ui_chat(owner, chat_id)], args=[request_id])

    def detach(self, stream: EventStream) -> None:
        """The client went away mid-answer: the generation runs on (a reconnect replays it from the log) while this
        task reads its events to the end, so the request's metrics, budget and release happen as for any other."""
        task = asyncio.create_task(_drain(stream), name=f"herd-ui-chat-{stream.request.id}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def close(self) -> None:
        """Shutdown: stop draining (each stream is released, which cancels its generation)."""
        tasks = list(self._drains)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _schemas(raw: bytes | None) -> tuple[tuple[str, str], ...]:
    """A record's tool schemas; a record written before they were kept (or garbled) has none: calls still parse,
    their XML-like values typed as JSON reads them."""
    try:
        return msgspec.json.decode(raw, type=tuple[tuple[str, str], ...]) if raw else ()
    except msgspec.DecodeError:
        return ()


async def _drain(stream: EventStream) -> None:
    try:
        while not stream.finished:
            await stream.next()
    except ServiceError:
        pass  # the failure is in the log too, where a reader finds it
    finally:
        await close_shielded(stream)
