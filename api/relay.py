"""Combinators over EventStreams that are not tied to HTTP: merge several requests' events, collect one, close
them even while being cancelled. Used by the routes and by the batch runner alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
from herd.api.events import EventStream
from herd.inference import Finished, TokenDelta


async def close_shielded(*streams: EventStream) -> None:
    """Release streams even while the surrounding scope is being cancelled (a client that went away)."""
    with anyio.CancelScope(shield=True):
        for stream in streams:
            await stream.close()


async def collect(stream: EventStream) -> tuple[str, Finished]:
    """The text and end of a one-choice request."""
    parts: list[str] = []
    async for event in stream.deltas():
        if isinstance(event, TokenDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("a stream ends with Finished or raises")


async def merged(streams: list[EventStream]) -> AsyncIterator[tuple[int, TokenDelta | Finished]]:
    """Interleave the events of several streams (one per prompt), tagged with the stream's index."""
    if len(streams) == 1:
        async for event in streams[0].deltas():
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TokenDelta | Finished] | BaseException | None] = asyncio.Queue()

    async def pump(index: int, stream: EventStream) -> None:
        try:
            async for event in stream.deltas():
                queue.put_nowait((index, event))
            queue.put_nowait(None)
        except Exception as exc:  # handed to the consumer, which re-raises it
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                remaining -= 1
                continue
            yield item
    finally:
        for task in tasks:
            task.cancel()
