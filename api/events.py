"""One request's stream of events, in order: gaps, dead workers and a lost Redis become exceptions, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import msgspec
from herd.api.auth.ratelimit import METER
from herd.api.demux import LOST
from herd.api.telemetry.genai import RequestTelemetry
from herd.errors import StreamBroken, Unavailable, from_kind
from herd.inference import (
    Embedded,
    EmbeddingRequest,
    Failed,
    Finished,
    GenerationRequest,
    Started,
    StreamEvent,
    TokenDelta,
)

AnyRequest = GenerationRequest | EmbeddingRequest


class Upstream(Protocol):
    """What a stream needs from whoever opened it (the Gateway): a liveness check while no event comes, and release."""

    async def check_progress(self, stream: EventStream) -> None:
        """No event came for a heartbeat interval: raise if nobody is working on the request any more."""

    async def release(self, stream: EventStream) -> None:
        """The stream is done with (finished or abandoned): unsubscribe, and cancel the request if unfinished."""


class EventStream:
    """One request's events, in order. A gap, a dead worker or a lost Redis becomes an exception, never a hang."""

    def __init__(
        self,
        upstream: Upstream,
        request: AnyRequest,
        queue: asyncio.Queue[bytes],
        *,
        heartbeat_s: float,
        wait_timeout_s: float,
        telemetry: RequestTelemetry | None = None,
    ) -> None:
        self._upstream = upstream
        self.request = request
        self._queue = queue
        self._heartbeat_s = heartbeat_s  # how long to wait for an event before asking whether anyone still works
        # The GenAI span and metrics of the request (api/telemetry/genai.py): sees every event and the error it ends
        # with.
        self.telemetry = telemetry if telemetry is not None else RequestTelemetry(None, None, request)
        # How long the request may wait for a worker before it is given up (interactive: queue_wait_timeout_s).
        self.wait_timeout_s = wait_timeout_s
        self._meter = METER.get()  # the caller's token budget, when rate limits are on
        self._charged = 0
        self._completed = 0  # completion tokens of the choices that finished
        self._decoder: msgspec.msgpack.Decoder[StreamEvent] = msgspec.msgpack.Decoder(StreamEvent)
        self._expected_seq = 0
        self.worker_id: str | None = None
        self.prompt_tokens = 0
        self.finished = False
        self._choices_left = request.n if isinstance(request, GenerationRequest) else 1

    async def next(self) -> StreamEvent:
        try:
            event = await self._next()
        except Exception as exc:  # a failure of the request (a cancellation is the client's, told apart at close)
            self.telemetry.failed(exc)
            raise
        self.telemetry.event(event)
        return event

    async def _next(self) -> StreamEvent:
        while True:
            try:
                async with asyncio.timeout(self._heartbeat_s):
                    raw = await self._queue.get()
            except TimeoutError:
                await self._upstream.check_progress(self)
                continue
            if raw == LOST:
                raise Unavailable("lost the connection to Redis while streaming; events may be missing")
            event = self._decoder.decode(raw)
            if event.seq != self._expected_seq:
                raise StreamBroken(f"event {self._expected_seq} of the response went missing (got {event.seq})")
            self._expected_seq += 1
            if isinstance(event, Started):
                self._started(event)
                self.worker_id = event.worker_id
                self.prompt_tokens = event.prompt_tokens
            elif isinstance(event, Failed):
                self.finished = True
                raise from_kind(event.kind, event.message, event.param)
            elif isinstance(event, Finished):
                self._choices_left -= 1
                self.finished = self._choices_left <= 0
            elif isinstance(event, Embedded):
                self.finished = True
            if isinstance(event, TokenDelta) and self._meter is not None:
                self._charge(event.tokens)
            elif isinstance(event, Finished):
                self._completed += event.usage.completion_tokens  # each choice's own; the prompt is in every one
                if self.finished:
                    self._charge(event.usage.prompt_tokens + self._completed - self._charged)
            elif isinstance(event, Embedded):
                self._charge(event.prompt_tokens - self._charged)
            return event

    def _charge(self, tokens: int) -> None:
        """Count tokens against the caller's budget as they happen, so a stream cut short still pays for itself;
        Finished corrects the count to the worker's own."""
        if self._meter is not None:
            self._meter.used += tokens
            self._charged += tokens

    def _started(self, event: Started) -> None:
        self._charge(event.prompt_tokens)

    async def start(self) -> None:
        """Wait until a worker admitted the request (or refused it): the moment to pick the HTTP status."""
        event = await self.next()
        assert isinstance(event, Started), event

    async def deltas(self) -> AsyncIterator[TokenDelta | Finished]:
        while not self.finished:
            event = await self.next()
            assert isinstance(event, TokenDelta | Finished)
            yield event

    async def embedded(self) -> Embedded:
        event = await self.next()
        assert isinstance(event, Embedded), event
        return event

    async def close(self) -> None:
        await self._upstream.release(self)
