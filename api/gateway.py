"""The only Redis I/O in the API: worker view, admission, subscribe-then-enqueue, event streams, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

import msgspec
import redis.exceptions
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix
from herd import channels
from herd.api.auth.ratelimit import METER
from herd.api.auth.ratelimit import SCRIPT as RATE_LIMIT_SCRIPT
from herd.api.events import LOST, AnyRequest, EventStream
from herd.api.metrics import Metrics
from herd.api.models.store import ModelStore
from herd.api.wire.herd import ModelQueue, QueueStatus, RequestPosition
from herd.config import Settings
from herd.errors import (
    EngineError,
    ModelNotFound,
    Overloaded,
    Unavailable,
    WorkerLost,
)
from herd.inference import EmbeddingRequest, WorkerStatus
from herd.tracing import traceparent_of
from opentelemetry.trace import Span, Tracer, get_current_span
from redis.asyncio.client import PubSub

log = logging.getLogger("herd.api.gateway")

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class _ModelOnly(msgspec.Struct):
    """The one field of a stored request (generation or embedding) that the queue view needs."""

    model: str


class Demux:
    """One pub/sub connection per API process, shared by every in-flight request.

    A subscription counts only once Redis confirmed it, so an event published after `subscribe` returns
    cannot be missed.
    """

    def __init__(self, redis: ArqRedis, control_channel: str) -> None:
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
        except (TimeoutError, *_REDIS_ERRORS) as exc:
            self._queues.pop(channel.encode(), None)
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc

    async def unsubscribe(self, channel: str) -> None:
        key = channel.encode()
        if self._queues.pop(key, None) is not None and self._pubsub is not None and self._connected.is_set():
            with contextlib.suppress(*_REDIS_ERRORS):
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
            except _REDIS_ERRORS as exc:
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


class Gateway:
    def __init__(
        self,
        settings: Settings,
        redis: ArqRedis,
        api_id: str,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._pinned = frozenset(m.name for m in settings.models)  # configured: always loaded, never unloaded
        self._tracer = tracer
        self.metrics = metrics
        self._redis = redis
        self._demux = Demux(redis, f"{channels.PREFIX}:api:{api_id}")
        self._workers: list[WorkerStatus] = []
        self._workers_at = 0.0
        self._worker_decoder = msgspec.json.Decoder(WorkerStatus)
        self._quota_script = redis.register_script(RATE_LIMIT_SCRIPT)  # EVALSHA: the script is sent once

    async def start(self) -> None:
        self._demux.start()

    async def close(self) -> None:
        await self._demux.close()

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(1):
                return bool(await self._redis.ping())
        except (TimeoutError, *_REDIS_ERRORS):
            return False

    async def workers(self, max_age_s: float = 0.5) -> list[WorkerStatus]:
        """Live workers from their heartbeats (a key that expired is a dead worker), cached briefly."""
        if time.monotonic() - self._workers_at < max_age_s:
            return self._workers
        try:
            keys = [key async for key in self._redis.scan_iter(match=channels.WORKER_PATTERN, count=200)]
            values = await self._redis.mget(keys) if keys else []
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        self._workers = [self._worker_decoder.decode(v) for v in values if v]
        self._workers_at = time.monotonic()
        return self._workers

    async def queue_status(self) -> QueueStatus:
        """Per model: jobs waiting and running (arq keeps a running job in the queue with an in-progress key)."""
        live = await self.workers(max_age_s=0)
        rows = []
        try:
            for model in sorted(await self.models()):
                jobs = await self._redis.zrange(channels.queue(model), 0, -1, withscores=True)
                running = await self._running([job for job, _ in jobs])
                waiting = [score for (job, score), busy in zip(jobs, running, strict=True) if not busy]
                serving = [w for w in live if model in w.models]
                rows.append(
                    ModelQueue(
                        model=model,
                        waiting=len(waiting),
                        running=sum(running),
                        oldest_wait_s=max(0.0, time.time() - min(waiting) / 1000) if waiting else 0.0,
                        workers=len(serving),
                        slots_total=sum(w.slots_total for w in serving),
                        slots_busy=sum(w.slots_busy for w in serving),
                    )
                )
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        return QueueStatus(models=rows)

    async def request_position(self, request_id: str) -> RequestPosition:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(channels.request(request_id))
                pipe.exists(channels.stats(request_id))
                raw, done = await pipe.execute()
            if done:
                return RequestPosition(id=request_id, state="done")
            if raw is None:
                return RequestPosition(id=request_id, state="unknown")
            model = msgspec.msgpack.decode(raw, type=_ModelOnly).model
            jobs = await self._redis.zrange(channels.queue(model), 0, -1)
            running = await self._running(jobs)
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        waiting = [job.decode() for job, busy in zip(jobs, running, strict=True) if not busy]
        if request_id in waiting:
            return RequestPosition(id=request_id, state="waiting", model=model, position=waiting.index(request_id))
        return RequestPosition(id=request_id, state="running", model=model)

    async def _running(self, jobs: list[bytes]) -> list[bool]:
        if not jobs:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.exists(in_progress_key_prefix + job.decode())
            return [bool(n) for n in await pipe.execute()]

    async def stored(self) -> dict[str, int]:
        """Models in the store, with the context a worker will give them."""
        if self.store is None:
            return {}
        # On the loop, not in a thread: one stat of the manifests directory (~4 us; a thread hop costs ~190 us here,
        # paid several times per request); the small manifest files are re-read only after a change.
        manifests = self.store.all()
        return {name: self.store.model_config(m, self.settings).n_ctx for name, m in manifests.items()}

    async def models(self) -> dict[str, int]:
        """Every model herd knows (configured, in the store, or served), with its context length per sequence."""
        known = {m.name: m.n_ctx for m in self.settings.models}
        known.update({name: n for name, n in (await self.stored()).items() if name not in known})
        for worker in await self.workers():
            known.update(dict.fromkeys(worker.models, worker.n_ctx))
        return known

    async def open(self, request: AnyRequest, low_priority: bool = False, wait: bool = True) -> EventStream:
        """Admit, subscribe, then enqueue; returns once a worker admitted the request (without `wait`: once queued;
        the caller then awaits `stream.start()` itself).

        low_priority (batch lines): the job goes to the model's batch queue, which workers take from only when no
        interactive job waits; the interactive queue's bound does not apply (the batch driver bounds its lines)."""
        await self._check_model(request.model)
        meter = METER.get()
        if meter is not None:  # the caller's tokens per minute: an estimate now, settled when the request ends
            await meter.reserve(self, request)
        if self._tracer is None:
            return await self._open(request, None, low_priority, wait)
        span = get_current_span()  # the HTTP server span
        operation = (
            "embeddings" if isinstance(request, EmbeddingRequest) else "chat" if request.messages else "text_completion"
        )
        span.set_attributes(
            {"gen_ai.operation.name": operation, "gen_ai.request.model": request.model, "herd.request_id": request.id}
        )
        with self._tracer.start_as_current_span("herd.enqueue") as enqueue:
            # The worker's spans join this trace through the context the job carries.
            traced = msgspec.structs.replace(request, traceparent=traceparent_of(enqueue))
            return await self._open(traced, span, low_priority, wait)

    async def _open(self, request: AnyRequest, span: Span | None, low_priority: bool, wait: bool) -> EventStream:
        channel = channels.events(request.id)
        # The subscription and the queue-depth check (which also stores the request) go to Redis side by side.
        subscribed, depth = await asyncio.gather(
            self._demux.subscribe(channel), self._store(request), return_exceptions=True
        )
        if isinstance(subscribed, BaseException) or isinstance(depth, BaseException):
            await self._demux.unsubscribe(channel)
            raise subscribed if isinstance(subscribed, BaseException) else depth  # type: ignore[misc]
        # A batch line may wait behind interactive traffic for as long as its batch's window allows.
        wait_s = self.settings.request_ttl_s if low_priority else self.settings.queue_wait_timeout_s
        stream = EventStream(self, request, subscribed, span, wait_timeout_s=wait_s)
        try:
            if depth >= self.settings.queue_max and not low_priority:
                raise Overloaded(f"the queue for model '{request.model}' is full ({depth} requests); retry shortly")
            await self._enqueue(request, low_priority)
            if wait:
                await stream.start()
        except BaseException:
            await self.release(stream)
            raise
        return stream

    async def _check_model(self, model: str) -> None:
        if model not in await self.models():
            raise ModelNotFound(f"The model '{model}' does not exist", param="model")
        if not any(model in w.models for w in await self.workers()):
            await self.load(model)  # the request waits in the queue while the worker starts

    async def loadable(self, model: str) -> bool:
        """A store model that is not configured: a worker for it starts on demand and stops when idle."""
        return model not in self._pinned and model in await self.stored()

    async def load(self, model: str) -> None:
        """Ask the model manager for a worker for `model`; Unavailable when none can come (a configured model's
        worker is the supervisor's or the cluster's to restart)."""
        if not await self.loadable(model):
            raise Unavailable(f"no worker is serving model '{model}' right now", param="model")
        try:
            failed = await self._redis.get(channels.load_failed(model))
            if failed is None:
                await self._redis.sadd(channels.LOAD_REQUESTS, model)  # type: ignore[misc]
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        if failed is not None:
            raise EngineError(f"model '{model}' failed to load ({failed.decode()}); the server log has details")

    async def set_keep_alive(self, model: str, seconds: float) -> None:
        """The latest request's keep_alive decides how long an on-demand model stays loaded after it."""
        if model in self._pinned:
            return
        try:
            await self._redis.set(channels.keep_alive(model), "-1" if math.isinf(seconds) else repr(seconds))
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc

    async def expirations(self, models: list[str]) -> dict[str, float]:
        """When each loaded model's worker plans to exit (math.inf: never, as for configured models)."""
        found = dict.fromkeys(models, math.inf)
        on_demand = [m for m in models if m not in self._pinned]
        if not on_demand:
            return found
        try:
            values = await self._redis.mget([channels.expires(m) for m in on_demand])
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        for model, value in zip(on_demand, values, strict=True):
            if value is not None and float(value) >= 0:
                found[model] = float(value)
        return found

    async def _store(self, request: AnyRequest) -> int:
        """Store the request for its worker; return how many jobs the model's queue holds."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(channels.request(request.id), msgspec.msgpack.encode(request), ex=self.settings.request_ttl_s)
                pipe.zcard(channels.queue(request.model))
                _, depth = await pipe.execute()
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        return int(depth)

    async def _enqueue(self, request: AnyRequest, low_priority: bool = False) -> None:
        try:
            # The job carries only the id (arq logs job arguments); the worker reads the request from its key.
            job = await self._redis.enqueue_job(
                "embed" if isinstance(request, EmbeddingRequest) else "generate",
                request.id,
                _job_id=request.id,
                _queue_name=channels.batch_queue(request.model) if low_priority else channels.queue(request.model),
                _expires=self.settings.request_ttl_s if low_priority else self.settings.queue_wait_timeout_s,
            )
            if not low_priority:  # batch lines wait for a worker's poll: they are in no hurry
                await self._redis.publish(channels.announce(request.model), request.id.encode())
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        if job is None:
            raise Overloaded("a request with this id is already queued")

    async def check_progress(self, stream: EventStream) -> None:
        """Called when no event came for a heartbeat interval: is anyone still working on this request?"""
        request = stream.request
        try:
            worker_id = stream.worker_id
            if worker_id is None:
                raw = await self._redis.get(channels.started(request.id))
                worker_id = raw.decode() if raw else None
            if worker_id is not None:
                if not await self._redis.exists(channels.worker(worker_id)):
                    await self._forget_job(request)
                    raise WorkerLost("the worker serving this request stopped; no more output will come")
                return
            if not any(request.model in w.models for w in await self.workers()):
                await self.load(request.model)  # again: the worker may have been on its way out when we asked
        except _REDIS_ERRORS as exc:
            raise Unavailable("lost the connection to Redis") from exc
        if time.time() - request.enqueued_at > stream.wait_timeout_s:
            raise Unavailable("the request waited too long in the queue")

    async def _forget_job(self, request: AnyRequest) -> None:
        """A dead worker's job would stay in the queue, counted as running, until arq's in-progress key expires
        (job_timeout, an hour): take it out now. Its request already started, so it can never run again."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(channels.queue(request.model), request.id)
            pipe.zrem(channels.batch_queue(request.model), request.id)
            pipe.delete(in_progress_key_prefix + request.id, job_key_prefix + request.id)
            await pipe.execute()

    async def release(self, stream: EventStream) -> None:
        """Unsubscribe; if the request did not finish, tell its worker (or the queue) to drop it."""
        await self._demux.unsubscribe(channels.events(stream.request.id))
        if not stream.finished:
            await self.cancel(stream.request.id)

    async def take_quota(self, buckets: list[tuple[str, int, float, int]]) -> tuple[bool, list[float]]:
        """Run the rate-limit script over (key, capacity, need, cost) buckets: all taken, or none; their levels."""
        args = [str(v) for _, cap, need, cost in buckets for v in (cap, need, cost)]
        try:
            ok, *levels = await self._quota_script(keys=[b[0] for b in buckets], args=args)
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        return bool(ok), [float(level) for level in levels]

    async def issuer_keys(self) -> dict[str, bytes]:
        """The built-in issuer's keys by kid (see channels.ISSUER_KEYS)."""
        try:
            stored = await self._redis.hgetall(channels.ISSUER_KEYS)  # type: ignore[misc]
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        return {k.decode(): v for k, v in stored.items()}

    async def add_issuer_key(self, kid: str, value: bytes, expired: list[str]) -> bytes:
        """Store `value` under `kid` unless another replica did first; returns the one stored. Drops `expired`."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(channels.ISSUER_KEYS, kid, value)  # type: ignore[arg-type]
                pipe.hget(channels.ISSUER_KEYS, kid)
                if expired:
                    pipe.hdel(channels.ISSUER_KEYS, *expired)
                stored = (await pipe.execute())[1]
        except _REDIS_ERRORS as exc:
            raise Unavailable("the API cannot reach Redis; try again shortly") from exc
        assert isinstance(stored, bytes)
        return stored

    async def cancel(self, request_id: str) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(channels.cancelled(request_id), b"1", ex=self.settings.request_ttl_s)
                pipe.publish(channels.CANCEL_CHANNEL, request_id.encode())
                # arq's own abort set: a job still in the queue is dropped when a worker picks it up.
                pipe.zadd(abort_jobs_ss, {request_id: int(time.time() * 1000)})
                await pipe.execute()
        except _REDIS_ERRORS as exc:
            log.warning("could not publish cancel for %s: %s", request_id, exc)
