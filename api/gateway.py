"""Request traffic between the API and the workers: admission, subscribe-then-enqueue, cancel, and the fleet view.

    open(request)      the model known? loaded (else ask for it)? tokens reserved? -> subscribe to its events ->
                       one script: queue bound checked, request stored, job queued, workers woken -> EventStream
    cancel(id)         a flag, a broadcast and arq's abort set: reaches the job queued or running
    workers/models/queue_status/request_position    the fleet as its heartbeats and queues show it

Events arrive through the Demux (api/demux.py); streams call back for liveness and release (the Upstream protocol
of api/events.py). On-demand loading is herd.loading's; rate-limit buckets are api/auth/ratelimit.py's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import nullcontext

import msgspec
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from herd import channels
from herd.api import affinity
from herd.api.auth.ratelimit import METER
from herd.api.demux import Demux
from herd.api.events import AnyRequest, EventStream
from herd.api.models.store import ModelStore
from herd.api.slots import SlotView
from herd.api.telemetry.genai import RequestTelemetry
from herd.api.telemetry.metrics import Metrics
from herd.config import Settings
from herd.errors import ModelNotFound, Overloaded, Unavailable, WorkerLost
from herd.inference import EmbeddingRequest, ModelQueue, QueueStatus, RequestPosition, WorkerStatus
from herd.loading import LoadClient
from herd.redisconn import REDIS_ERRORS, map_redis_errors
from herd.registry import Registry
from opentelemetry.trace import Tracer

log = logging.getLogger("herd.api.gateway")

# Admission and dispatch in one step, so the queue bound holds under any burst (a depth read and an enqueue as two
# steps let every request of a burst see the same short queue). The job is arq's own (its key, written as
# ArqRedis.enqueue_job writes it); the request is stored beside it only when admitted. An interactive job goes into
# the model's ledger (the bound, /v1/queue and KEDA count it) and onto the queue of one worker: the first candidate
# (workers with a free slot, best first, as the heartbeats show them) that an affinity key names, else the first
# candidate, else the overflow, which the first worker with a free slot empties. Only that worker is woken.
# KEYS: job, result, ledger (or the batch queue), request, overflow (or the batch queue), then the affinity keys to
# look up (ARGV[12] of them), then the ones to set. ARGV: job id, score (ms), job expiry (ms), job bytes, bound (-1:
# none), request bytes, request TTL (s), candidates (space-separated worker ids), worker queue prefix, announce
# channel prefix, affinity TTL (s), lookups, arq's job key prefix, its in-progress key prefix.
# Each admission also sweeps the ledger's oldest entry when it is a job nobody holds any more (no job key, not in
# progress: its API and worker both died), so such entries do not count against the bound for long. A worker's queue
# lives as long as a request (request TTL), renewed by each job: a dead worker's leaves no key behind.
# The announcement is "<job id> <stamp>": the stamp (Redis' clock, in microseconds) orders the announcements to a
# worker, and the worker's heartbeat carries the latest it had handled, so the API knows which of its own are not in
# that heartbeat's count yet, whatever the heartbeat's age (no host's clock is compared with another's).
# Returns {0, depth, worker or "", affinity, stamp} admitted (affinity: 1 a key named the worker, 2 a key named a
# worker without room, 0 none), {1, depth} queue full, {2, 0} a job with this id exists. The worker's keys are made
# here from the prefixes: herd runs on one Redis (or Sentinel), not on a Redis Cluster.
_ADMIT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return {2, 0, '', 0} end
local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
if head and redis.call('EXISTS', ARGV[13] .. head, ARGV[14] .. head) == 0 then redis.call('ZREM', KEYS[3], head) end
local depth = redis.call('ZCARD', KEYS[3])
local bound = tonumber(ARGV[5])
if bound >= 0 and depth >= bound then return {1, depth, '', 0} end
redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7])
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if KEYS[5] == KEYS[3] then return {0, depth + 1, '', 0} end
local room, first = {}, nil
for id in string.gmatch(ARGV[8], '%S+') do
  room[id] = true
  first = first or id
end
local lookups = tonumber(ARGV[12])
local target, affinity = first, 0
for i = 6, 5 + lookups do
  local known = redis.call('GET', KEYS[i])
  if known then
    if room[known] then target, affinity = known, 1; break end
    affinity = 2
  end
end
if not target then
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  return {0, depth + 1, '', affinity}
end
redis.call('ZADD', ARGV[9] .. target, ARGV[2], ARGV[1])
redis.call('EXPIRE', ARGV[9] .. target, ARGV[7])
local t = redis.call('TIME')
local stamp = t[1] .. string.format('%06d', tonumber(t[2]))
redis.call('PUBLISH', ARGV[10] .. target, ARGV[1] .. ' ' .. stamp)
for i = 6 + lookups, #KEYS do redis.call('SET', KEYS[i], target, 'EX', ARGV[11]) end
return {0, depth + 1, target, affinity, stamp}
"""

# A job still waiting on the queue of a worker that died goes to the overflow (exactly once: the ZREM decides).
# KEYS: the worker's queue, the overflow. ARGV: job id.
_RESCUE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], score, ARGV[1])
  return 1
end
return 0
"""

AFFINITY_OUTCOMES = ("none", "hit", "busy")  # by the script's affinity code; "overflow": no worker had room


class _ModelOnly(msgspec.Struct):
    """The one field of a stored request (generation or embedding) that the queue view needs."""

    model: str


class Gateway:
    def __init__(
        self,
        settings: Settings,
        redis: ArqRedis,
        demux: Demux,
        loads: LoadClient,
        *,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.loads = loads
        self._tracer = tracer
        self._metrics = metrics
        self._redis = redis
        self._demux = demux
        self._workers: list[WorkerStatus] = []
        self._workers_at = 0.0
        self._worker_decoder = msgspec.json.Decoder(WorkerStatus)
        self._admit = redis.register_script(_ADMIT)  # EVALSHA: the script is sent once
        self._rescue = redis.register_script(_RESCUE)
        self._registry = Registry(redis)
        self._slots = SlotView()  # free slots: the heartbeats and what this process did since
        self._targets: dict[str, str] = {}  # request id -> the worker its job was put on, while it waits

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(1):
                return bool(await self._redis.ping())
        except (TimeoutError, *REDIS_ERRORS):
            return False

    # ---- admission ---------------------------------------------------------------------------------------------

    async def open(self, request: AnyRequest, low_priority: bool = False, wait: bool = True) -> EventStream:
        """Admit, subscribe, then enqueue; returns once a worker admitted the request (without `wait`: once queued;
        the caller then awaits `stream.start()` itself).

        low_priority (batch lines): the job goes to the model's batch queue, which workers take from only when no
        interactive job waits; the interactive queue's bound does not apply (the batch driver bounds its lines)."""
        await self._check_model(request.model)
        meter = METER.get()
        if meter is not None:  # the caller's tokens per minute: an estimate now, settled when the request ends
            await meter.reserve(request)
        telemetry = RequestTelemetry(self._tracer, self._metrics, request, low_priority)  # the GenAI span, metrics
        try:
            with telemetry.job_context() as trace:
                # The worker's spans join this trace through the context (traceparent, tracestate) the job carries.
                traced = msgspec.structs.replace(request, **trace)
                return await self._open(traced, telemetry, low_priority, wait)
        except BaseException as exc:
            telemetry.failed(exc)  # no-op once the stream recorded it (and closed it)
            telemetry.close()
            raise

    async def _open(
        self, request: AnyRequest, telemetry: RequestTelemetry, low_priority: bool, wait: bool
    ) -> EventStream:
        # Subscribed (and confirmed by Redis) before the job exists: no event can come before we listen.
        queue = await self._demux.subscribe(channels.events(request.id))
        # A batch line may wait behind interactive traffic for as long as its batch's window allows.
        wait_s = self.settings.request_ttl_s if low_priority else self.settings.queue_wait_timeout_s
        stream = EventStream(
            self,
            request,
            queue,
            heartbeat_s=self.settings.heartbeat_interval_s,
            wait_timeout_s=wait_s,
            telemetry=telemetry,
        )
        try:
            await self._enqueue(request, low_priority)
            if wait:
                await stream.start()
        except BaseException as exc:
            telemetry.failed(exc)
            await self.release(stream)
            raise
        return stream

    async def _enqueue(self, request: AnyRequest, low_priority: bool) -> None:
        """Queue the job (arq's format; the job carries only the id, since arq logs job arguments: the worker reads
        the request from its key) on a chosen worker's queue, within the queue's bound."""
        s = self.settings
        expires_s = s.request_ttl_s if low_priority else s.queue_wait_timeout_s
        model = request.model
        function = "embed" if isinstance(request, EmbeddingRequest) else "generate"
        now_ms = int(time.time() * 1000)
        job = serialize_job(function, (request.id,), {}, None, now_ms, serializer=self._redis.job_serializer)
        # Batch lines wait in their own queue for a worker's spare slots: no worker is chosen or woken for them.
        ledger = channels.batch_queue(model) if low_priority else channels.queue(model)
        overflow = ledger if low_priority else channels.overflow(model)
        lookup, store = ([], []) if low_priority else affinity.digests(request)
        candidates = [] if low_priority else await self._candidates(model)
        keys = [job_key_prefix + request.id, result_key_prefix + request.id, ledger, channels.request(request.id)]
        keys += [
            overflow,
            *(channels.affinity(model, d) for d in lookup),
            *(channels.affinity(model, d) for d in store),
        ]
        bound = -1 if low_priority else s.queue_max
        args: list[bytes | str | int] = [request.id, now_ms, int(expires_s * 1000), job, bound]
        args += [msgspec.msgpack.encode(request), s.request_ttl_s, " ".join(candidates)]
        args += [channels.worker_queue(model, ""), channels.announce(""), channels.AFFINITY_TTL_S, len(lookup)]
        args += [job_key_prefix, in_progress_key_prefix]
        # The likely target's slot counts as taken from now, not from the admission's reply: the requests of a burst
        # choose while the first ones are still being admitted, and must not all pile onto the one worker they see
        # with the most free slots (it would hand the extra ones back to the overflow).
        with self._slots.choosing(candidates[0]) if candidates else nullcontext(), map_redis_errors():
            outcome, depth, target, affine, *stamp = await self._admit(keys=keys, args=args)
        if outcome == 1:
            raise Overloaded(f"the queue for model '{model}' is full ({depth} requests); retry shortly")
        if outcome == 2:
            raise Overloaded("a request with this id is already queued")
        if low_priority:
            return
        target = target.decode() if isinstance(target, bytes) else str(target)
        if target:
            self._targets[request.id] = target
            self._slots.sent(target, request.id, int(stamp[0]))
        if self._metrics is not None:
            self._metrics.observe_dispatch(model, AFFINITY_OUTCOMES[int(affine)] if target else "overflow")

    async def _candidates(self, model: str) -> list[str]:
        """Workers of `model` with a free slot, most free first (ties in random order, so that API replicas reading
        the same heartbeats spread their requests); slots this process filled since a heartbeat, or is filling, count
        as busy."""
        found = []
        for w in await self.workers():
            if model in w.models:
                free = self._slots.free(w)
                if free > 0:
                    found.append((-free, random.random(), w.worker_id))
        return [worker_id for _, _, worker_id in sorted(found)]

    async def _check_model(self, model: str) -> None:
        if model not in await self.models():
            raise ModelNotFound(f"The model '{model}' does not exist", param="model")
        if not any(model in w.models for w in await self.workers()):
            await self.load(model)  # the request waits in the queue while the worker starts

    async def loadable(self, model: str) -> bool:
        """A store model that is not configured: a worker for it starts on demand and stops when idle."""
        return model not in self.loads.pinned and model in await self.stored()

    async def load(self, model: str) -> None:
        """Ask the model manager for a worker for `model`; Unavailable when none can come (a configured model's
        worker is the supervisor's or the cluster's to restart)."""
        if not await self.loadable(model):
            raise Unavailable(f"no worker is serving model '{model}' right now", param="model")
        await self.loads.request(model)

    # ---- while a request runs (the streams' Upstream) ----------------------------------------------------------

    async def check_progress(self, stream: EventStream) -> None:
        """Called when no event came for a heartbeat interval: is anyone still working on this request?"""
        request = stream.request
        with map_redis_errors("lost the connection to Redis"):
            worker_id = stream.worker_id
            if worker_id is None:
                raw = await self._redis.get(channels.started(request.id))
                worker_id = raw.decode() if raw else None
            if worker_id is not None:
                self._targets.pop(request.id, None)
                if not await self._redis.exists(channels.worker(worker_id)):
                    await self._forget_job(request, worker_id)
                    raise WorkerLost("the worker serving this request stopped; no more output will come")
                return
            target = self._targets.get(request.id)
            if target is not None and not await self._redis.exists(channels.worker(target)):
                # Given to a worker that died before starting it: to the overflow, for the next worker with room.
                self._targets.pop(request.id, None)
                queues = [channels.worker_queue(request.model, target), channels.overflow(request.model)]
                if await self._rescue(keys=queues, args=[request.id]):
                    log.warning("request %s was waiting on worker %s, which stopped; requeued", request.id, target)
            if not any(request.model in w.models for w in await self.workers()):
                await self.load(request.model)  # again: the worker may have been on its way out when we asked
        if time.time() - request.enqueued_at > stream.wait_timeout_s:
            raise Unavailable("the request waited too long in the queue")

    async def _forget_job(self, request: AnyRequest, worker_id: str) -> None:
        """A dead worker's job would stay in the ledger, counted as running, until arq's in-progress key expires
        (job_timeout, an hour): take it out now. Its request already started, so it can never run again: its record
        (which may be megabytes of prompt) and arq's retry counter go too, instead of lasting request_ttl_s."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(channels.queue(request.model), request.id)
            pipe.zrem(channels.worker_queue(request.model, worker_id), request.id)
            pipe.zrem(channels.batch_queue(request.model), request.id)
            pipe.delete(in_progress_key_prefix + request.id, job_key_prefix + request.id)
            pipe.delete(channels.request(request.id), retry_key_prefix + request.id)
            await pipe.execute()

    async def release(self, stream: EventStream) -> None:
        """Unsubscribe; if the request did not finish, tell its worker (or the queue) to drop it."""
        stream.telemetry.close()
        self._targets.pop(stream.request.id, None)
        if stream.worker_id is not None:  # its slot is free again, before the worker's next heartbeat says so
            self._slots.ended(stream.worker_id, stream.request.id)
        await self._demux.unsubscribe(channels.events(stream.request.id))
        if not stream.finished:
            await self.cancel(stream.request.id)

    async def cancel(self, request_id: str) -> None:
        """Best effort: with Redis away, the request's TTLs clean up after it."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(channels.cancelled(request_id), b"1", ex=self.settings.request_ttl_s)
                # The record goes now: a worker that claims the job later finds none and skips it (as if cancelled),
                # one that already runs it read it at its claim. A job stranded on a dead worker's queue, which no
                # worker will ever take, otherwise kept it (megabytes, perhaps) for request_ttl_s.
                pipe.delete(channels.request(request_id))
                pipe.publish(channels.CANCEL_CHANNEL, request_id.encode())
                # arq's own abort set: a job still in the queue is dropped when a worker picks it up.
                pipe.zadd(abort_jobs_ss, {request_id: int(time.time() * 1000)})
                await pipe.execute()
        except REDIS_ERRORS as exc:
            log.warning("could not publish cancel for %s: %s", request_id, exc)

    # ---- the fleet view ----------------------------------------------------------------------------------------

    async def workers(self, max_age_s: float = 0.5) -> list[WorkerStatus]:
        """Live workers from their heartbeats (a key that expired is a dead worker), cached briefly."""
        if time.monotonic() - self._workers_at < max_age_s:
            return self._workers
        with map_redis_errors():
            values = await self._registry.live()  # one command, whatever else the keyspace holds
        self._workers = [self._worker_decoder.decode(v) for v in values]
        self._workers_at = time.monotonic()
        self._slots.refresh(self._workers)
        return self._workers

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

    async def queue_status(self) -> QueueStatus:
        """Per model: jobs waiting and running (arq keeps a running job in the queue with an in-progress key)."""
        live = await self.workers(max_age_s=0)
        rows = []
        with map_redis_errors():
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
        return QueueStatus(models=rows)

    async def request_position(self, request_id: str) -> RequestPosition:
        with map_redis_errors():
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
