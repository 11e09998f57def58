"""The only Redis I/O in a worker: claim a request, publish its events, listen for cancels, heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import msgspec
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix
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
from herd.registry import Registry
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

log = logging.getLogger("herd.worker.bus")

R = TypeVar("R", GenerationRequest, EmbeddingRequest)

# A worker's poll, in one command. KEYS: this worker's queue, the model's overflow, its batch queue, its ledger, arq's
# abort set. ARGV: free slots, free slots for batch lines (free less the reserve), now (ms), how many of its own ready
# jobs to list, 1 to read the abort set (0: not). Fills the free slots from the overflow (interactive jobs no worker
# had room for), oldest first; batch lines only while the overflow is empty, so a waiting interactive request always
# goes first. Atomic: a job moves to exactly one worker. Returns the number of jobs moved, the number of ready ids,
# the ids of the jobs ready on this worker's queue, then the ids in arq's abort set: arq's own poll reads (its queue
# read and its MULTI/ZRANGE/ZREMRANGEBYSCORE/EXEC of the abort set) made here, in the same command.
_POLL = """
local moved = 0
local free = tonumber(ARGV[1])
local waiting = 0
if free > 0 then
  waiting = redis.call('ZCARD', KEYS[2])
  if waiting > 0 then
    local jobs = redis.call('ZPOPMIN', KEYS[2], free)
    for i = 1, #jobs, 2 do
      redis.call('ZADD', KEYS[1], jobs[i + 1], jobs[i])
      moved = moved + 1
    end
    waiting = waiting - moved
  end
end
local spare = tonumber(ARGV[2]) - moved
if spare > 0 and waiting == 0 and redis.call('ZCARD', KEYS[3]) > 0 then
  local lines = redis.call('ZPOPMIN', KEYS[3], spare)
  for i = 1, #lines, 2 do
    redis.call('ZADD', KEYS[1], ARGV[3], lines[i])
    redis.call('ZADD', KEYS[4], ARGV[3], lines[i])
    moved = moved + 1
  end
end
local reply = {moved, 0}
if tonumber(ARGV[4]) > 0 then
  local ready = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
  reply[2] = #ready
  for i = 1, #ready do reply[#reply + 1] = ready[i] end
end
if ARGV[5] == '1' then
  local aborted = redis.call('ZRANGE', KEYS[5], 0, -1)
  for i = 1, #aborted do reply[#reply + 1] = aborted[i] end
end
return reply
"""

# Jobs on this worker's queue that it will not start (it is full, or stopping) go to the overflow, for the next
# worker with a free slot; a job already started (arq's in-progress key) stays. KEYS: this worker's queue, the
# overflow. ARGV: arq's in-progress key prefix, then the job ids (none: every job on the queue).
_GIVE_BACK = """
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGE', KEYS[1], 0, -1) end
local moved = 0
for _, id in ipairs(ids) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and redis.call('EXISTS', ARGV[1] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], score, id)
    moved = moved + 1
  end
end
return moved
"""

# arq's start of a job (its start_jobs: WATCH the in-progress key, EXISTS it, ZSCORE the job, MULTI PSETEX EXEC: four
# round trips) in one: the job is marked in progress only if it is on this worker's queue and not in progress already
# (started here or elsewhere). arq also skips a job scored in the future (deferred); herd defers none, and a score is
# the admission's time on the API's clock, which may run ahead of this worker's. The same command makes herd's claim
# (WorkerBus.claim: the started key, the request, its cancel flag) when arq's run_job will call the job's function
# (its job key is there and it is not in arq's abort set), which claim() then takes without a round trip of its own.
# KEYS: this worker's queue, the job's in-progress key, its job key, arq's abort set, the request's started key, its
# record, its cancel flag. ARGV: job id, the in-progress key's TTL (ms), this worker's id, the request TTL (s).
# Returns nil (not to be started), {score} (started, not claimed), or {score, first claim 1/0, record, cancelled}.
_BEGIN = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or redis.call('EXISTS', KEYS[2]) == 1 then return false end
redis.call('PSETEX', KEYS[2], ARGV[2], '1')
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('ZSCORE', KEYS[4], ARGV[1]) then return {score} end
local first = redis.call('SET', KEYS[5], ARGV[3], 'NX', 'EX', ARGV[4]) and 1 or 0
return {score, first, redis.call('GET', KEYS[6]), redis.call('EXISTS', KEYS[7])}
"""


class _Claim(NamedTuple):
    """What claim() reads, read ahead by begin()."""

    first: bool  # this worker set the started key
    raw: bytes | None  # the request's record
    cancelled: bool


class Polled(NamedTuple):
    moved: int  # jobs taken from the overflow and batch lines
    ready: list[bytes]  # ids of the jobs ready on this worker's queue
    aborted: list[str]  # ids in arq's abort set (when asked for)


class WorkerBus:
    def __init__(self, settings: Settings, redis: Redis, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self._redis = redis
        self._pending: list[tuple[str | bytes | int, ...]] = []  # commands for the publisher's next write
        self._durable: dict[str, int] = {}  # durable request id -> its choices still running
        self._claims: dict[str, _Claim] = {}  # request id -> its claim, made by begin(), for claim() to take
        self._ttl = settings.request_ttl_s
        self._wake = asyncio.Event()
        self._encoder = msgspec.msgpack.Encoder()
        self._tasks: list[asyncio.Task[None]] = []
        self._poll = redis.register_script(_POLL)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._begin = redis.register_script(_BEGIN)
        self._registry = Registry(redis)

    # ---- requests ----------------------------------------------------------------------------------

    async def claim(self, request_id: str, kind: type[R]) -> R | None:
        """The request to run, or None when it must not run: cancelled, expired, or already started once."""
        made = self._claims.pop(request_id, None)
        if made is not None:
            first_start, raw, cancelled = made
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(channels.started(request_id), self.worker_id.encode(), nx=True, ex=self._ttl)
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

    async def take(self, model: str, free: int, free_for_batch: int) -> int:
        """Move jobs waiting for any worker (the overflow, then batch lines) onto this worker's queue, up to its free
        slots; arq's poll then starts them."""
        return (await self.poll(model, free, free_for_batch)).moved

    async def poll(self, model: str, free: int, free_for_batch: int, limit: int = 0, aborts: bool = False) -> Polled:
        """take(), then up to `limit` ids of the jobs ready on this worker's queue and, with `aborts`, the ids in arq's
        abort set: one command. Redis away: nothing, and a warning (the poll runs again)."""
        keys = [channels.worker_queue(model, self.worker_id), channels.overflow(model)]
        keys += [channels.batch_queue(model), channels.queue(model), abort_jobs_ss]
        args = [max(free, 0), max(free_for_batch, 0), int(time.time() * 1000), limit, int(aborts)]
        try:
            reply = await self._poll(keys, args)
        except REDIS_ERRORS as exc:
            log.warning("could not poll for jobs: %s", exc)
            return Polled(0, [], [])
        n_ready = int(reply[1])
        return Polled(int(reply[0]), list(reply[2 : 2 + n_ready]), [i.decode() for i in reply[2 + n_ready :]])

    async def begin(self, model: str, job_id: str, in_progress_ms: int) -> int | None:
        """Mark a job on this worker's queue in progress, as arq's start_jobs does, and claim its request, in one
        command: its score, or None when it must not start here (gone from the queue, or in progress already)."""
        keys = [channels.worker_queue(model, self.worker_id), in_progress_key_prefix + job_id, job_key_prefix + job_id]
        keys += [abort_jobs_ss, channels.started(job_id), channels.request(job_id), channels.cancelled(job_id)]
        reply = await self._begin(keys, [job_id, in_progress_ms, self.worker_id, self._ttl])
        if reply is None:
            return None
        if len(reply) > 1:
            self._claims[job_id] = _Claim(bool(reply[1]), reply[2], bool(reply[3]))
        return int(float(reply[0]))

    def unclaim(self, job_id: str) -> None:
        """The job ended. If arq failed it before its function took the claim begin() made (a retry counted, an abort
        since), the started key goes with the publisher's next write: the API must not wait on this worker for it."""
        made = self._claims.pop(job_id, None)
        if made is not None and made.first:
            self._pending.append(("DEL", channels.started(job_id)))
            self._wake.set()

    async def give_back(self, model: str, *job_ids: str) -> int:
        """Hand jobs this worker will not start (none named: all its waiting jobs) to the overflow."""
        keys = [channels.worker_queue(model, self.worker_id), channels.overflow(model)]
        try:
            return int(await self._give_back(keys, [in_progress_key_prefix, *job_ids]))
        except REDIS_ERRORS as exc:
            log.warning("could not hand back waiting jobs: %s", exc)
            return 0

    async def settle(self, model: str, job_id: str) -> None:
        """A job ended (done, failed, aborted): out of the model's ledger (arq took it off this worker's queue), and
        its request's record gone even when the job never ran (cancelled while it waited: arq aborts it before
        generate() could forget it, and the record would pin Redis memory for request_ttl_s)."""
        with contextlib.suppress(*REDIS_ERRORS):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(channels.queue(model), job_id)
                pipe.delete(channels.request(job_id))
                await pipe.execute()

    # ---- events ------------------------------------------------------------------------------------

    def emit(self, events: list[tuple[str, StreamEvent]], stats: list[RequestStats]) -> None:
        """Called on the event loop once per decode step; the publisher task sends everything in one pipeline. The
        stats of the requests that ended go first, on the same connection: they are stored by the time a request's
        last event reaches the API (and its client), however busy this worker's event loop is."""
        for item in stats:
            self._pending.append(("SET", channels.stats(item.request_id), msgspec.json.encode(item), "EX", self._ttl))
            self._pending.append(("DEL", channels.request(item.request_id)))  # the record goes with the request
        for rid, ev in events:
            payload = self._encoder.encode(ev)
            self._pending.append(("PUBLISH", channels.events(rid), payload))
            if rid in self._durable:
                self._append_durable(rid, ev, payload)
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
        """Sends each decode step's events (and the stats of the requests that ended) as one write of pipelined
        commands on a connection of its own, without waiting for the replies (a reader drains them): per token this
        costs a write, not a round trip."""
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
                    pending, self._pending = self._pending, []
                    if pending:
                        await conn.send_packed_command(conn.pack_commands(pending), check_health=False)
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

    # ---- cancels and heartbeats ----------------------------------------------------------------------

    async def _listener(self, on_message: Callable[[str, str], None]) -> None:
        """Cancels (a broadcast) and the announcements of jobs put on this worker's queue (request ids both)."""
        kinds = {channels.CANCEL_CHANNEL.encode(): "cancel", channels.announce(self.worker_id).encode(): "announce"}
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
                # the heartbeat key and this worker's entry in the registry of live workers, in one command
                await self._registry.beat(self.worker_id, msgspec.json.encode(status()), ttl_ms)
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    def start(self, model: str, on_message: Callable[[str, str], None], status: Callable[[], WorkerStatus]) -> None:
        self._tasks = [
            asyncio.create_task(self._publisher(), name="herd-publisher"),
            asyncio.create_task(self._listener(on_message), name="herd-listener"),
            asyncio.create_task(self._heartbeat(status), name="herd-heartbeat"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*REDIS_ERRORS):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(channels.worker(self.worker_id))
                pipe.zrem(channels.WORKERS, self.worker_id)
                await pipe.execute()


def new_worker_id() -> str:
    """Host and pid say where it runs; the random part tells apart a restart with the same pid, and workers built in
    one process (bench/fleet.py hosts many simulated ones) within the same millisecond."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


async def _drain_replies(conn: AbstractConnection) -> None:
    while True:
        await conn.read_response()
