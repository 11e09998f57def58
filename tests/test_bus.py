"""A worker's Redis I/O (workers/bus.py) in process on the real Redis: claiming a request, its events on the channel
the API subscribes to (and a durable request's Redis Stream), stats, cancels and announcements from the API,
heartbeats, and batch lines moved into the interactive queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix
from herd import channels, redisconn
from herd.config import Settings, load_settings
from herd.errors import ErrorKind
from herd.inference import (
    Failed,
    Finished,
    GenerationRequest,
    RequestStats,
    Started,
    StreamEvent,
    TokenDelta,
    Usage,
    WorkerStatus,
)
from herd.registry import Registry
from herd.workers.bus import WorkerBus
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

DB = 2  # on the shared Redis no other test uses 2 (test_chaos's and test_redisconn's are private servers)
MODEL = "bus-model"
WAIT_S = 30  # a bounded wait for something that happens within milliseconds; no test relies on its length


@pytest.fixture
async def redis(redis_port: int) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_port, db=DB)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def settings(redis_port: int) -> Settings:
    return Settings(redis_url=f"redis://127.0.0.1:{redis_port}/{DB}", heartbeat_interval_s=0.05, heartbeat_ttl_s=2.0)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[WorkerBus]:
    client = redisconn.async_client(settings)  # what the worker gets from arq
    worker_bus = WorkerBus(settings, client, "worker-1")
    yield worker_bus
    await worker_bus.stop()
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


def status() -> WorkerStatus:
    return WorkerStatus("worker-1", (MODEL,), 2048, 4, 1, 10, 2, 0, 1234, "host", time.time())


async def start(bus: WorkerBus, redis: Redis, messages: list[tuple[str, str]] | None = None) -> None:
    """Start the bus's tasks and wait until its listener is subscribed (a message before that is not for it)."""
    bus.start(MODEL, lambda kind, value: (messages if messages is not None else []).append((kind, value)), status)

    async def subscribed() -> bool:
        counts = await redis.pubsub_numsub(channels.CANCEL_CHANNEL, channels.announce("worker-1"))
        return all(n >= 1 for _, n in counts)

    await eventually(subscribed)


async def subscribe(redis: Redis, channel: str) -> PubSub:
    """A subscription Redis has confirmed: a message published after this returns reaches it."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    deadline = time.monotonic() + WAIT_S
    while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
        assert time.monotonic() < deadline, "the subscription was never confirmed"
    return pubsub


async def flushed(bus: WorkerBus, redis: Redis) -> None:
    """Wait until every command the bus has been given so far ran: its publisher sends them in order on one
    connection, so once a marker event emitted last arrives, Redis has run everything before it."""
    pubsub = await subscribe(redis, channels.events("marker"))
    bus.emit([("marker", Started(0, "worker-1", 0))], [])
    deadline = time.monotonic() + WAIT_S
    while await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0) is None:
        assert time.monotonic() < deadline, "the marker never arrived"
    await pubsub.aclose()


async def put_request(redis: Redis, request: GenerationRequest) -> None:
    """What the API's gateway writes before it enqueues the job."""
    await redis.set(channels.request(request.id), msgspec.msgpack.encode(request), ex=60)


async def test_a_request_is_claimed_once(bus: WorkerBus, redis: Redis) -> None:
    request = GenerationRequest(id="r1", model=MODEL, prompt="hi", max_tokens=3)
    await put_request(redis, request)
    assert await bus.claim("r1", GenerationRequest) == request
    assert await redis.get(channels.started("r1")) == b"worker-1"
    assert 0 < await redis.ttl(channels.started("r1")) <= bus.settings.request_ttl_s
    assert await bus.claim("r1", GenerationRequest) is None  # delivered again after a start: never run twice


async def test_a_cancelled_or_expired_request_is_not_claimed(bus: WorkerBus, redis: Redis) -> None:
    await put_request(redis, GenerationRequest(id="gone", model=MODEL, prompt="hi"))
    await redis.set(channels.cancelled("gone"), b"1")
    assert await bus.claim("gone", GenerationRequest) is None
    assert await bus.claim("never-written", GenerationRequest) is None
    await bus.forget("gone")
    assert await redis.exists(channels.request("gone")) == 0


async def queued(redis: Redis, request: GenerationRequest, score: int = 1000) -> None:
    """The request, its arq job key and its place on this worker's queue, as the API's admission leaves them."""
    await put_request(redis, request)
    await redis.set(job_key_prefix + request.id, b"job", ex=60)
    await redis.zadd(channels.worker_queue(MODEL, "worker-1"), {request.id: score})


async def test_a_job_s_start_claims_its_request_in_the_same_command(bus: WorkerBus, redis: Redis) -> None:
    request = GenerationRequest(id="b1", model=MODEL, prompt="hi", max_tokens=3)
    await queued(redis, request)
    assert await bus.begin(MODEL, "b1", 60_000) == 1000  # arq's run_job wants the score
    assert await redis.exists(in_progress_key_prefix + "b1", channels.started("b1")) == 2
    assert await redis.get(channels.started("b1")) == b"worker-1"
    await redis.delete(channels.request("b1"))  # claim() takes what the start read: it asks Redis nothing
    assert await bus.claim("b1", GenerationRequest) == request
    assert await bus.begin(MODEL, "b1", 60_000) is None  # in progress already
    assert await bus.begin(MODEL, "not-queued-here", 60_000) is None


async def test_a_start_claims_nothing_that_arq_will_not_run(bus: WorkerBus, redis: Redis) -> None:
    await start(bus, redis)
    await queued(redis, GenerationRequest(id="aborted", model=MODEL, prompt="hi"))
    await redis.zadd(abort_jobs_ss, {"aborted": 1})  # arq's run_job fails it before generate() runs
    await queued(redis, GenerationRequest(id="expired", model=MODEL, prompt="hi"))
    await redis.delete(job_key_prefix + "expired")
    for job_id in ("aborted", "expired"):
        assert await bus.begin(MODEL, job_id, 60_000) == 1000
        assert await redis.exists(channels.started(job_id)) == 0
        assert await bus.claim(job_id, GenerationRequest) is not None  # no claim was made ahead: claim() makes it
    # A claim made ahead that the job's function never took (arq failed the job first) is undone when the job ends.
    await queued(redis, GenerationRequest(id="failed", model=MODEL, prompt="hi"))
    assert await bus.begin(MODEL, "failed", 60_000) == 1000
    bus.unclaim("b-other")  # a job whose claim was taken or never made: nothing to undo
    bus.unclaim("failed")
    await flushed(bus, redis)
    assert await redis.exists(channels.started("failed")) == 0


async def test_events_arrive_on_the_request_channel_in_order_and_stats_are_stored(bus: WorkerBus, redis: Redis) -> None:
    await put_request(redis, GenerationRequest(id="r2", model=MODEL, prompt="hi"))
    pubsub = await subscribe(redis, channels.events("r2"))  # the API subscribes before it enqueues
    await start(bus, redis)
    sent: list[StreamEvent] = [
        Started(0, "worker-1", 3),
        TokenDelta(1, "Hel", 2),
        TokenDelta(2, "lo", 1),
        Finished(3, "stop", Usage(prompt_tokens=3, completion_tokens=3)),
    ]
    bus.emit([("r2", event) for event in sent[:2]], [])  # one decode step ...
    bus.emit([("r2", event) for event in sent[2:]], [RequestStats("r2", "worker-1", "stop", 3, 3, time.time())])
    decoder = msgspec.msgpack.Decoder(StreamEvent)  # as api/events.py reads them
    received: list[StreamEvent] = []
    deadline = time.monotonic() + WAIT_S
    while len(received) < len(sent) and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            received.append(decoder.decode(message["data"]))
    await pubsub.aclose()
    assert received == sent
    # Stored before the last event went out (on the same connection): a client that got its answer finds them.
    assert await redis.exists(channels.stats("r2")) == 1
    stats = msgspec.json.decode(await redis.get(channels.stats("r2")), type=RequestStats)
    assert (stats.finish_reason, stats.completion_tokens) == ("stop", 3)
    assert 0 < await redis.ttl(channels.stats("r2")) <= bus.settings.request_ttl_s
    assert await redis.exists(channels.request("r2")) == 0  # the record goes with the request's end


async def test_a_request_s_stats_are_stored_before_its_last_event_is_published(bus: WorkerBus, redis: Redis) -> None:
    await start(bus, redis)
    async with redis.monitor() as monitor:  # every command Redis runs, in the order it runs them
        stats = RequestStats("r3", "worker-1", "stop", 1, 1, time.time())
        bus.emit([("r3", Finished(0, "stop", Usage(1, 1)))], [stats])
        seen: list[str] = []
        while not any(c.startswith(f"PUBLISH {channels.events('r3')}") for c in seen):
            command = await asyncio.wait_for(monitor.next_command(), WAIT_S)
            seen.append(command["command"])
    assert any(c.startswith(f"SET {channels.stats('r3')}") for c in seen), seen


async def test_a_durable_request_also_writes_its_stream_until_every_choice_ends(bus: WorkerBus, redis: Redis) -> None:
    await put_request(redis, GenerationRequest(id="d", model=MODEL, prompt="hi", n=2, durable=True))
    await bus.claim("d", GenerationRequest)
    await start(bus, redis)
    usage = Usage(prompt_tokens=3, completion_tokens=1)
    events: list[StreamEvent] = [
        Started(0, "worker-1", 3),
        TokenDelta(1, "a", 1, 0),
        TokenDelta(2, "b", 1, 1),
        Finished(3, "stop", usage, index=0),
        Finished(4, "stop", usage, index=1),  # the last choice: the stream is complete
    ]
    bus.emit([("d", event) for event in events], [])
    bus.emit([("d", TokenDelta(5, "late", 1))], [])  # after the end: on the channel only
    await flushed(bus, redis)
    entries = await redis.xrange(channels.durable_events("d"))
    decoder = msgspec.msgpack.Decoder(StreamEvent)
    assert [decoder.decode(fields[b"e"]) for _, fields in entries] == events
    assert 0 < await redis.pttl(channels.durable_events("d")) <= bus.settings.responses_ttl * 1000


async def test_a_failed_durable_request_ends_its_stream(bus: WorkerBus, redis: Redis) -> None:
    await put_request(redis, GenerationRequest(id="f", model=MODEL, prompt="hi", n=3, durable=True))
    await bus.claim("f", GenerationRequest)
    await start(bus, redis)
    bus.emit([("f", Failed(0, ErrorKind.ENGINE_ERROR, "boom")), ("f", TokenDelta(1, "late", 1))], [])
    bus.emit([("other", Started(0, "worker-1", 1))], [])  # not durable: no stream
    await flushed(bus, redis)
    assert await redis.xlen(channels.durable_events("f")) == 1  # a failure ends every choice at once
    assert await redis.exists(channels.durable_events("other")) == 0


async def test_cancels_and_announcements_reach_the_worker(bus: WorkerBus, redis: Redis) -> None:
    messages: list[tuple[str, str]] = []
    await start(bus, redis, messages)
    await redis.publish(channels.announce("another-worker"), b"not-mine")
    await redis.publish(channels.CANCEL_CHANNEL, b"r7")
    await redis.publish(channels.announce("worker-1"), b"job-9")

    async def both() -> bool:
        return len(messages) >= 2

    await eventually(both)
    assert messages == [("cancel", "r7"), ("announce", "job-9")]


async def test_the_heartbeat_appears_refreshes_and_goes_with_stop(bus: WorkerBus, redis: Redis) -> None:
    await start(bus, redis)
    key = channels.worker("worker-1")

    async def beating() -> bool:
        return bool(await redis.exists(key))

    await eventually(beating)
    first = msgspec.json.decode(await redis.get(key), type=WorkerStatus)
    assert (first.worker_id, first.models, first.slots_total) == ("worker-1", (MODEL,), 4)
    assert 0 < await redis.pttl(key) <= 2000  # heartbeat_ttl_s: a silent worker disappears

    async def refreshed() -> bool:
        raw = await redis.get(key)
        return raw is not None and msgspec.json.decode(raw, type=WorkerStatus).heartbeat_at > first.heartbeat_at

    await eventually(refreshed)
    assert any(key.decode() == channels.WORKER_PATTERN.replace("*", "worker-1") for key in await redis.keys())
    # each beat also scores the worker in the registry of live workers with its heartbeat's expiry (Redis' clock)
    seconds, micros = await redis.time()
    expiry = await redis.zscore(channels.WORKERS, "worker-1")
    assert expiry is not None and seconds * 1000 + micros // 1000 < expiry <= seconds * 1000 + micros // 1000 + 2000
    assert [msgspec.json.decode(raw, type=WorkerStatus).worker_id for raw in await Registry(redis).live()] == [
        "worker-1"
    ]
    await bus.stop()
    assert await redis.exists(key) == 0
    assert await redis.zscore(channels.WORKERS, "worker-1") is None  # a clean stop leaves the registry at once
    assert await Registry(redis).live() == []


async def test_a_dead_worker_drops_out_of_the_registry(settings: Settings, redis: Redis) -> None:
    """A worker that dies (its tasks end with no stop) is listed until its heartbeat's TTL runs out, then not, and its
    registry entry is pruned by score on the next read."""
    short = msgspec.structs.replace(settings, heartbeat_ttl_s=0.3)
    client = redisconn.async_client(short)
    dying = WorkerBus(short, client, "worker-1")
    try:
        await start(dying, redis)
        registry = Registry(redis)

        async def listed() -> bool:
            return len(await registry.live()) == 1

        await eventually(listed)
        for task in dying._tasks:  # the process dies: no more beats, no clean-up
            task.cancel()
        await asyncio.gather(*dying._tasks, return_exceptions=True)
        dying._tasks = []

        async def gone() -> bool:
            return await registry.live() == []

        await eventually(gone)
        assert await redis.zcard(channels.WORKERS) == 0  # pruned by score, not only filtered

        async def expired() -> bool:
            return not await redis.exists(channels.worker("worker-1"))

        await eventually(expired)  # its heartbeat key goes by its own TTL, set in the same script
    finally:
        await dying.stop()
        await client.aclose()


async def test_free_slots_take_the_overflow_first_then_batch_lines(bus: WorkerBus, redis: Redis) -> None:
    now_ms = int(time.time() * 1000)
    mine, overflow = channels.worker_queue(MODEL, "worker-1"), channels.overflow(MODEL)
    await redis.zadd(channels.batch_queue(MODEL), {"line-1": 1, "line-2": 2, "line-3": 3})
    await redis.zadd(overflow, {"waiting-1": now_ms - 20, "waiting-2": now_ms - 10})
    assert await bus.take(MODEL, 1, 0) == 1  # one free slot and none to spare: the oldest waiting job
    assert await redis.zrange(mine, 0, -1) == [b"waiting-1"]
    assert await bus.take(MODEL, 3, 3) == 3  # the last waiting job, then batch lines in what is left
    assert set(await redis.zrange(mine, 0, -1)) == {b"waiting-1", b"waiting-2", b"line-1", b"line-2"}
    assert await redis.zrange(channels.batch_queue(MODEL), 0, -1) == [b"line-3"]
    assert set(await redis.zrange(channels.queue(MODEL), 0, -1)) == {b"line-1", b"line-2"}  # now in the ledger
    # Stopping (or full): what has not started goes back to the overflow, for another worker.
    await redis.set(in_progress_key_prefix + "line-1", b"1")
    assert await bus.give_back(MODEL, "waiting-2") == 1
    assert await bus.give_back(MODEL) == 2
    assert await redis.zrange(mine, 0, -1) == [b"line-1"]
    assert set(await redis.zrange(overflow, 0, -1)) == {b"waiting-1", b"waiting-2", b"line-2"}


async def test_a_poll_takes_reads_its_own_queue_and_the_abort_set_in_one_script(bus: WorkerBus, redis: Redis) -> None:
    now_ms = int(time.time() * 1000)
    mine = channels.worker_queue(MODEL, "worker-1")
    await redis.zadd(channels.overflow(MODEL), {"waiting-1": now_ms - 20})
    await redis.zadd(mine, {"announced-1": now_ms - 10, "later-1": now_ms + 600_000})  # a job not due yet
    await redis.zadd(abort_jobs_ss, {"cancelled-1": now_ms})
    polled = await bus.poll(MODEL, 2, 0, 10, aborts=True)
    assert polled.moved == 1
    assert polled.ready == [b"waiting-1", b"announced-1"]  # due jobs only, oldest first, the one just taken too
    assert polled.aborted == ["cancelled-1"]
    # An idle worker's poll does not read the abort set; a full one takes nothing and lists nothing.
    assert (await bus.poll(MODEL, 1, 0, 10)).aborted == []
    assert await bus.poll(MODEL, 0, 0, 0, aborts=True) == (0, [], ["cancelled-1"])
    assert await redis.zrange(channels.overflow(MODEL), 0, -1) == []


# Moved from tests/test_transport.py (now test_events.py): two workers race for one request; a cancelled one.

TRANSPORT_REQUEST = GenerationRequest(id="req-1", model="m", prompt="hi")


async def test_a_request_is_claimed_at_most_once(redis: Redis) -> None:
    settings = load_settings({"HERD_MODELS": "m=/dev/null"})
    await redis.set(channels.request(TRANSPORT_REQUEST.id), msgspec.msgpack.encode(TRANSPORT_REQUEST))
    first = WorkerBus(settings, redis, "worker-a")
    second = WorkerBus(settings, redis, "worker-b")
    assert await first.claim(TRANSPORT_REQUEST.id, GenerationRequest) == TRANSPORT_REQUEST
    assert (
        await second.claim(TRANSPORT_REQUEST.id, GenerationRequest) is None
    )  # e.g. arq re-delivering the job of a killed worker
    assert await redis.get(channels.started(TRANSPORT_REQUEST.id)) == b"worker-a"


async def test_a_cancelled_request_is_never_claimed(redis: Redis) -> None:
    settings = load_settings({"HERD_MODELS": "m=/dev/null"})
    await redis.set(channels.request(TRANSPORT_REQUEST.id), msgspec.msgpack.encode(TRANSPORT_REQUEST))
    await redis.set(channels.cancelled(TRANSPORT_REQUEST.id), b"1")
    assert await WorkerBus(settings, redis, "worker-a").claim(TRANSPORT_REQUEST.id, GenerationRequest) is None
