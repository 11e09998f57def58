"""Background responses: each runs as an asyncio task of the API process that accepted it, on herd's one queue.

The task queues the generation (durable: the worker appends its events to a Redis Stream as it publishes them),
follows it like any other request (metrics, traces and token budgets as for chat) and settles the stored record
at the end. It holds a lease on the response while it runs. What happens when that process dies:

- the worker does not notice: it finishes the generation and its events, terminal one included, reach the Redis
  Stream without passing through any API process, so a resume on another replica replays the whole text;
- the record stays `queued` / `in_progress` with no lease; the next reader (GET, or a stream that waits) settles it
  from the events: the worker's terminal event if there is one, else `failed` once the worker that took it stopped
  heartbeating or the job outwaited queue_wait_timeout_s in the queue. Nothing hangs forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from herd.api.events import EventStream
from herd.api.gateway import Gateway
from herd.api.relay import close_shielded
from herd.api.responses.store import ResponseStore, new_lease_token
from herd.api.translate.responses_replies import ResponseAssembler, error_code, stored
from herd.api.translate.responses_requests import drop_oldest
from herd.errors import ContextLengthExceeded, ServiceError
from herd.inference import GenerationRequest, Started

log = logging.getLogger("herd.api.responses")
MAX_TRUNCATIONS = 64  # truncation auto: oldest items dropped one a try, at most this many times


class BackgroundRunner:
    def __init__(self, gateway: Gateway, store: ResponseStore) -> None:
        self._gateway = gateway
        self._store = store
        self._token = new_lease_token()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._interval = gateway.settings.heartbeat_interval_s

    async def start(
        self, response_id: str, request: GenerationRequest, assembler: ResponseAssembler, truncate: bool = False
    ) -> None:
        """Queue the generation now (a full queue or a missing worker is still a real status for the POST), then
        follow it in a task."""
        stream = await self._gateway.open(request, wait=False)
        try:
            await self._store.lease(response_id, self._token)
        except BaseException:
            await close_shielded(stream)
            raise
        run = self._run(response_id, stream, assembler, truncate)
        task = asyncio.create_task(run, name=f"herd-response-{response_id}")
        self._tasks[response_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(response_id, None))

    async def cancel(self, response_id: str) -> bool:
        """Cancel a response this process runs; False when it runs elsewhere (or no longer)."""
        task = self._tasks.get(response_id)
        if task is None:
            return False
        self._cancelled.add(response_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True

    async def close(self) -> None:
        """Shutdown: stop following; the generations go on in the workers and readers settle them (see above)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, response_id: str, opened: EventStream, assembler: ResponseAssembler, truncate: bool) -> None:
        watch = asyncio.create_task(self._keep_lease(response_id, asyncio.current_task()))
        stream: EventStream | None = opened
        try:
            try:
                stream = opened = await self._fit(response_id, opened, truncate)
                assembler.feed(Started(0, opened.worker_id or "", opened.prompt_tokens))
                await self._settle(response_id, assembler)
                async for event in opened.deltas():
                    assembler.feed(event)
            except ServiceError as exc:
                assembler.fail(exc.message, error_code(exc))
            except asyncio.CancelledError:
                if response_id not in self._cancelled:
                    stream = None  # shutting down: the worker goes on, a reader settles the response
                    raise
                assembler.cancel()
            await self._settle(response_id, assembler)
        except ServiceError as exc:
            log.warning("could not store the outcome of %s: %s", response_id, exc.message)
        finally:
            watch.cancel()
            self._cancelled.discard(response_id)
            if stream is not None:
                await close_shielded(stream)  # cancels the generation if it did not finish
            await self._store.release(response_id, self._token)

    async def _fit(self, response_id: str, opened: EventStream, truncate: bool) -> EventStream:
        """Wait for a worker to admit the generation; with truncation auto, a prompt beyond the context is queued
        again without its oldest item (a new request id each time, which the record names before it is queued, so
        readers move to its events: see routes/responses.py) until it fits."""
        tries = 0
        while True:
            try:
                await opened.start()
                return opened
            except ContextLengthExceeded:
                request = opened.request
                assert isinstance(request, GenerationRequest)
                shorter = drop_oldest(request.messages or ()) if truncate and tries < MAX_TRUNCATIONS else None
                if shorter is None:
                    raise
                tries += 1
                retry = msgspec.structs.replace(request, id=f"{request.id.split('-')[0]}-t{tries}", messages=shorter)
                await self._store.retarget(response_id, retry.id)
                opened = await self._gateway.open(retry, wait=False)

    async def _settle(self, response_id: str, assembler: ResponseAssembler) -> None:
        response = assembler.response
        await self._store.settle(response_id, response.status, stored(response, self._store.max_bytes))

    async def _keep_lease(self, response_id: str, task: asyncio.Task[object] | None) -> None:
        """Renew the lease while the task runs; a response cancelled on another replica stops the task here."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._store.renew(response_id, self._token)
                status = await self._store.status(response_id)
            except ServiceError:
                continue  # Redis away: the task itself finds out soon enough
            if status is None or status == "cancelled":
                if task is not None:
                    self._cancelled.add(response_id)
                    task.cancel()
                return
