"""What one engine step produced (events, request stats, ended jobs), handed from the engine thread to the event loop
in one call, so a step costs one publish round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from herd.inference import RequestStats, StreamEvent

Emit = Callable[[list[tuple[str, StreamEvent]], list[RequestStats]], None]


class Outbox:
    """Filled by the engine thread during a step; flush() passes it on and starts the next step's empty."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self.events: list[tuple[str, StreamEvent]] = []
        self.stats: list[RequestStats] = []
        self.resolved: list[asyncio.Future[None]] = []  # the jobs' futures, set once their events are out

    def flush(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Hand this step's events to the event loop, then wake the jobs that ended (in that order)."""
        if self.events or self.stats or self.resolved:
            events, stats, resolved = self.events, self.stats, self.resolved
            self.events, self.stats, self.resolved = [], [], []
            assert loop is not None
            loop.call_soon_threadsafe(self._deliver, events, stats, resolved)

    def _deliver(
        self, events: list[tuple[str, StreamEvent]], stats: list[RequestStats], resolved: list[asyncio.Future[None]]
    ) -> None:
        if events or stats:
            self._emit(events, stats)
        for future in resolved:
            if not future.done():
                future.set_result(None)
