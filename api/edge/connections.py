"""uvicorn's HTTP/1.1 protocol with the limits a server facing strangers needs, and the uvicorn options around it.

uvicorn closes a keep-alive connection that stays idle after a response, but a connection that never completes a
request head is never closed (a byte every few seconds cancels the idle timer for good), a head may be as large as
memory allows, and any number of sockets may be open. This protocol adds, per connection:
- a deadline for each request head (from a connection's start, or from the first byte of a later request): a silent
  or slow ("slowloris") socket is answered 408 and closed;
- a cap on the head's bytes: 431 and close;
- the same deadline between two pieces of a request body: a body that stalls is answered 408 (or, once the app has
  begun its response, the connection is closed and the app sees the client gone);
- a minimum rate for the whole body: after a grace of that same timeout, a body must keep arriving at
  `body_min_rate` bytes per second on average (the deadline moves one second later for each `body_min_rate` bytes
  received), so a client dribbling a byte now and then, never stalling long enough for the rule above, is dropped
  the same way. Time in which herd itself paused reading (the app not keeping up) is not held against the client;
- a cap on the connections one process holds: beyond it a new socket is answered 503 and closed at once.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from herd.config import Settings
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

_REASONS = {
    408: b"the request did not arrive in time\n",
    431: b"the request head is too large\n",
    503: b"too many connections; try again shortly\n",
}


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        *args: Any,
        header_timeout_s: float,
        max_header_bytes: int,
        max_connections: int,
        body_min_rate: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._max_header_bytes = max_header_bytes
        self._max_connections = max_connections
        self._body_min_rate = body_min_rate
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._rate_timer: asyncio.TimerHandle | None = None
        self._body_start = 0.0  # loop time the body's grace began (moved later by time herd paused reading)
        self._body_bytes = 0
        self._head_bytes = 0
        self._in_head = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self._refuse(503)
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._body_wait(False)
        self._rate_watch(False)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_bytes:
                self._refuse(431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size <= self._max_header_bytes:
            super().on_headers_complete()
            more = self.cycle is not None and self.cycle.more_body
            self._body_wait(more)
            self._rate_watch(more)
            return
        app = self.app  # the head arrived in one piece but is too large: answer with 431 instead of the app
        self.app = _head_too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_bytes += len(body)
        self._body_wait(True)  # a piece came: the next one has the whole timeout again

    def on_message_complete(self) -> None:
        self._body_wait(False)
        self._rate_watch(False)
        super().on_message_complete()

    def _rate_watch(self, watching: bool) -> None:
        """One timer per body, set for the deadline the bytes so far earn; re-armed when it fires early."""
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None
        if watching and self._body_min_rate > 0:
            self._body_start, self._body_bytes = self.loop.time(), 0
            self._rate_timer = self.loop.call_at(self._rate_deadline(), self._rate_check)

    def _rate_deadline(self) -> float:
        return self._body_start + self._header_timeout_s + self._body_bytes / self._body_min_rate

    def _rate_check(self) -> None:
        self._rate_timer = None
        now = self.loop.time()
        if self.flow.read_paused:  # herd is not reading: the client cannot send; this second is not its fault
            self._body_start += 1.0
            self._rate_timer = self.loop.call_at(now + 1.0, self._rate_check)
            return
        deadline = self._rate_deadline()
        if deadline > now:  # bytes came since the timer was set: they bought more time
            self._rate_timer = self.loop.call_at(deadline, self._rate_check)
            return
        self._body_too_slow()

    def _body_wait(self, waiting: bool) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if waiting:
            self._body_timer = self.loop.call_later(self._header_timeout_s, self._body_stalled)

    def _body_stalled(self) -> None:
        self._body_timer = None
        if self.flow.read_paused:  # herd paused reading (the app is behind): not the client's stall
            self._body_wait(True)
            return
        self._body_too_slow()

    def _body_too_slow(self) -> None:
        self._body_wait(False)
        self._rate_watch(False)
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # too late for a status: the app sees the client gone
        else:
            self._refuse(408)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self._header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still going out (the timer was armed by a pipelined head): it decides
        self._refuse(408)

    def _refuse(self, status: int) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        reason = _REASONS[status]
        self.transport.write(
            b"".join(
                (
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(reason)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    reason,
                )
            )
        )
        self.transport.close()


async def _head_too_large(scope: Any, receive: Any, send: Any) -> None:
    reason = _REASONS[431]
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": reason})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.run / uvicorn.Config keyword arguments that enforce settings' HTTP limits."""
    return {
        "http": functools.partial(
            GuardedHttpProtocol,
            header_timeout_s=settings.http_header_timeout_s,
            max_header_bytes=settings.http_max_header_bytes,
            max_connections=settings.http_max_connections,
            body_min_rate=settings.http_body_min_rate,
        ),
        "timeout_keep_alive": settings.http_idle_timeout_s,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,  # if h11 is ever chosen instead
        "limit_concurrency": settings.http_max_connections + 16,  # requests (tasks) beyond it get uvicorn's 503
        "backlog": min(2048, settings.http_max_connections),
    }
