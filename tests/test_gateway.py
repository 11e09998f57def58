"""The API's Gateway (api/gateway.py) in process on the real Redis, with no worker process: the test plays the worker's
part on Redis (a heartbeat key, events published on the request's channel). Admission and the queue bound, what
enqueue writes (request, arq job, ledger, the chosen worker's queue and its wake-up), streaming, cancel and release,
a dead worker, and the fleet view."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix
from herd import channels, redisconn
from herd.api.demux import Demux
from herd.api.gateway import Gateway
from herd.config import ModelConfig, Settings
from herd.errors import ModelNotFound, Overloaded, Unavailable, WorkerLost
from herd.inference import (
    Finished,
    GenerationRequest,
    RequestStats,
    Started,
    StreamEvent,
    TokenDelta,
    Usage,
    WorkerStatus,
)
from herd.loading import LoadClient
from herd.registry import Registry
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

DB = 2  # shared with tests/test_bus.py (each flushes it first; no server process uses it)
MODEL = "gw-model"
PINNED = "pinned-model"  # configured, so never loaded on demand
WAIT_S = 30  # bound on waits for things that happen within milliseconds


@pytest.fixture
async def redis(redis_port: int) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_port, db=DB)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def gateway(redis_port: int, redis: Redis) -> AsyncIterator[Gateway]:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{redis_port}/{DB}",
        models=(ModelConfig(name=PINNED, path="/nonexistent.gguf"),),
        queue_max=2,
        heartbeat_interval_s=0.1,
    )
    client = redisconn.async_client(settings)
    demux = Demux(client, channels.api_control("test-gateway"))
    demux.start()
    yield Gateway(settings, client, demux, LoadClient(client, frozenset({PINNED})))
    await demux.close()
    await client.aclose()


async def heartbeat(
    redis: Redis,
    worker_id: str,
    busy: int = 0,
    total: int = 4,
    model: str = MODEL,
    ttl_ms: int = 60_000,
    announced: int = 0,
    holding: tuple[str, ...] = (),
) -> WorkerStatus:
    """A worker's heartbeat, as workers/bus.py writes it (its key and its entry in the registry of live workers)."""
    status = WorkerStatus(
        worker_id, (model,), 1024, total, busy, 0, 0, 0, 1, "host", time.time(), announced=announced, holding=holding
    )
    await Registry(redis).beat(worker_id, msgspec.json.encode(status), ttl_ms)
    return status


async def subscribe(redis: Redis, channel: str) -> PubSub:
    """A subscription Redis has confirmed: a message published after this returns reaches it."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    deadline = time.monotonic() + WAIT_S
    while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
        assert time.monotonic() < deadline, "the subscription was never confirmed"
    return pubsub


async def received(pubsub: PubSub) -> bytes:
    """The next message's data (a bounded wait: it comes within milliseconds, or never)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            data: bytes = message["data"]
            return data
    raise AssertionError("no message came")


async def publish(redis: Redis, request_id: str, *events: StreamEvent) -> None:
    for event in events:
        await redis.publish(channels.events(request_id), msgspec.msgpack.encode(event))


def request(rid: str, model: str = MODEL) -> GenerationRequest:
    return GenerationRequest(id=rid, model=model, prompt="hi", enqueued_at=time.time())


async def test_an_unknown_or_unserved_model_is_refused_before_anything_is_stored(
    gateway: Gateway, redis: Redis
) -> None:
    with pytest.raises(ModelNotFound) as missing:
        await gateway.open(request("r", "no-such-model"))
    assert missing.value.param == "model"
    with pytest.raises(Unavailable) as unserved:  # configured, but no worker heartbeats for it
        await gateway.open(request("r", PINNED))
    assert unserved.value.param == "model"
    assert await redis.keys() == []


async def test_open_subscribes_enqueues_on_a_worker_and_streams_its_events(gateway: Gateway, redis: Redis) -> None:
    await heartbeat(redis, "w1")
    wakeups = await subscribe(redis, channels.announce("w1"))
    opening = asyncio.create_task(gateway.open(request("r1")))  # returns once a worker admitted the request
    assert (await received(wakeups)).split()[0] == b"r1"  # only the chosen worker is woken (with the job's stamp)
    await wakeups.aclose()
    stored = msgspec.msgpack.decode(await redis.get(channels.request("r1")), type=GenerationRequest)
    assert (stored.id, stored.prompt) == ("r1", "hi")
    assert await redis.exists(job_key_prefix + "r1") == 1  # arq's job
    assert await redis.zrange(channels.queue(MODEL), 0, -1) == [b"r1"]  # the ledger
    assert await redis.zrange(channels.worker_queue(MODEL, "w1"), 0, -1) == [b"r1"]
    usage = Usage(prompt_tokens=2, completion_tokens=2)
    await publish(redis, "r1", Started(0, "w1", 2), TokenDelta(1, "he", 1), TokenDelta(2, "y", 1))
    await publish(redis, "r1", Finished(3, "stop", usage))
    stream = await asyncio.wait_for(opening, WAIT_S)
    assert (stream.worker_id, stream.prompt_tokens) == ("w1", 2)
    deltas = [event async for event in stream.deltas()]
    assert [e.text for e in deltas if isinstance(e, TokenDelta)] == ["he", "y"] and stream.finished
    await stream.close()
    assert await redis.exists(channels.cancelled("r1")) == 0  # a finished request is not cancelled


async def test_the_queue_bound_refuses_and_stores_nothing(gateway: Gateway, redis: Redis) -> None:
    await heartbeat(redis, "w1", busy=4)  # no free slot: jobs wait in the overflow, counted by the ledger
    streams = [await gateway.open(request(f"q{i}"), wait=False) for i in range(2)]
    assert await redis.zrange(channels.overflow(MODEL), 0, -1) == [b"q0", b"q1"]
    with pytest.raises(Overloaded, match="the queue for model 'gw-model' is full \\(2 requests\\)"):
        await gateway.open(request("q2"), wait=False)
    assert await redis.exists(channels.request("q2"), job_key_prefix + "q2") == 0
    assert await redis.zcard(channels.queue(MODEL)) == 2
    for stream in streams:
        await stream.close()


async def test_the_worker_with_the_most_free_slots_is_chosen(gateway: Gateway, redis: Redis) -> None:
    await heartbeat(redis, "full", busy=4, total=4)
    await heartbeat(redis, "one-free", busy=3, total=4)
    await heartbeat(redis, "three-free", busy=1, total=4)
    stream = await gateway.open(request("d1"), wait=False)
    assert await redis.zrange(channels.worker_queue(MODEL, "three-free"), 0, -1) == [b"d1"]
    queues = [channels.worker_queue(MODEL, w) for w in ("full", "one-free")]
    assert await redis.exists(*queues, channels.overflow(MODEL)) == 0
    await stream.close()


async def test_a_burst_counts_each_choice_before_the_admissions_return(gateway: Gateway, redis: Redis) -> None:
    # Three requests choose at once, before any admission has returned: "two-free" must get two of them and
    # "one-free" one, not all three (which would make "two-free" hand one back to the overflow).
    await heartbeat(redis, "two-free", busy=2, total=4)
    await heartbeat(redis, "one-free", busy=3, total=4)
    gateway.settings = msgspec.structs.replace(gateway.settings, queue_max=3)
    await gateway.workers()  # the fleet view is read before the burst, as a busy API holds it
    streams = await asyncio.gather(*(gateway.open(request(f"b{i}"), wait=False) for i in range(3)))
    assert await redis.zcard(channels.worker_queue(MODEL, "two-free")) == 2
    assert await redis.zcard(channels.worker_queue(MODEL, "one-free")) == 1
    assert await redis.exists(channels.overflow(MODEL)) == 0
    for stream in streams:
        await stream.close()


async def test_a_job_stays_counted_until_a_heartbeat_written_after_its_announcement(
    gateway: Gateway, redis: Redis
) -> None:
    # Heartbeats are up to a second old when the API reads them: one newer than the last the API had can still be
    # older than the API's latest announcement to the worker. The announcement's stamp, which the worker reports
    # back, tells the two apart.
    gateway.settings = msgspec.structs.replace(gateway.settings, queue_max=10)
    await heartbeat(redis, "w", busy=0, total=2)
    wakeups = await subscribe(redis, channels.announce("w"))
    streams = [await gateway.open(request("s1"), wait=False)]
    first_stamp = int((await received(wakeups)).split()[1])
    await heartbeat(redis, "w", busy=0, total=2)  # newer, but written before the worker had s1
    await gateway.workers(max_age_s=0)
    streams.append(await gateway.open(request("s2"), wait=False))  # w's second slot
    second_stamp = int((await received(wakeups)).split()[1])
    assert second_stamp > first_stamp
    streams.append(await gateway.open(request("s3"), wait=False))  # w is full: s1 and s2
    assert await redis.zrange(channels.worker_queue(MODEL, "w"), 0, -1) == [b"s1", b"s2"]
    assert await redis.zrange(channels.overflow(MODEL), 0, -1) == [b"s3"]
    # A heartbeat written after the worker handled s1 (and counted it) but not s2: one slot busy, one taken by s2.
    await heartbeat(redis, "w", busy=1, total=2, announced=first_stamp, holding=("s1",))
    await gateway.workers(max_age_s=0)
    streams.append(await gateway.open(request("s4"), wait=False))
    assert await redis.zrange(channels.overflow(MODEL), 0, -1) == [b"s3", b"s4"]
    # The worker handled both (and s1 ended): one slot free.
    await heartbeat(redis, "w", busy=1, total=2, announced=second_stamp, holding=("s2",))
    await gateway.workers(max_age_s=0)
    streams.append(await gateway.open(request("s5"), wait=False))
    assert await redis.zrange(channels.worker_queue(MODEL, "w"), 0, -1) == [b"s1", b"s2", b"s5"]
    await wakeups.aclose()
    for stream in streams:
        await stream.close()


async def test_cancel_reaches_a_queued_or_running_job(gateway: Gateway, redis: Redis) -> None:
    listener = await subscribe(redis, channels.CANCEL_CHANNEL)
    await gateway.cancel("c1")
    assert await received(listener) == b"c1"  # every worker hears it; the one running c1 drops it
    await listener.aclose()
    assert await redis.get(channels.cancelled("c1")) == b"1"  # a job not yet started skips it
    assert 0 < await redis.ttl(channels.cancelled("c1")) <= gateway.settings.request_ttl_s
    assert await redis.zscore(abort_jobs_ss, "c1") is not None  # arq drops it from the queue


async def test_releasing_an_unfinished_stream_cancels_its_request(gateway: Gateway, redis: Redis) -> None:
    await heartbeat(redis, "w1")
    stream = await gateway.open(request("gone"), wait=False)
    await stream.close()  # the client went away
    assert await redis.get(channels.cancelled("gone")) == b"1"


async def test_a_worker_that_stops_heartbeating_fails_its_request(gateway: Gateway, redis: Redis) -> None:
    await heartbeat(redis, "w1")
    stream = await gateway.open(request("lost"), wait=False)
    await publish(redis, "lost", Started(0, "w1", 2))
    await asyncio.wait_for(stream.start(), WAIT_S)
    await redis.delete(channels.worker("w1"))  # its heartbeat expired
    with pytest.raises(WorkerLost):
        await asyncio.wait_for(stream.next(), WAIT_S)  # no event for a heartbeat interval: the gateway checks
    await stream.close()
    assert await redis.zcard(channels.queue(MODEL)) == 0  # its job leaves the ledger at once


async def test_the_fleet_view_reads_the_registry_without_a_scan(gateway: Gateway, redis: Redis) -> None:
    """The fleet view is one command (a script over the registry of live workers) whatever the keyspace holds: no
    SCAN, as Redis itself saw it (MONITOR, this test's database only: other herds of the suite may share the server).
    A worker that stops beating drops out when its TTL runs out, and its entry goes."""
    await redis.mset({f"unrelated:{i}": b"x" for i in range(2000)})  # what a SCAN for heartbeats would walk
    await heartbeat(redis, "steady")
    await heartbeat(redis, "dying", ttl_ms=300)
    seen: list[str] = []
    watcher = Redis(
        host=redis.connection_pool.connection_kwargs["host"], port=redis.connection_pool.connection_kwargs["port"]
    )
    async with watcher.monitor() as monitor:

        async def watch() -> None:
            while True:
                command = await monitor.next_command()
                if command.get("db") == DB and command.get("client_type") != "lua":
                    seen.append(str(command["command"]).split()[0].upper())
                    if command["command"] == "ECHO fleet-view-done":
                        return

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.1)  # MONITOR is on before the first read
        reads = 0

        async def live() -> set[str]:
            nonlocal reads
            reads += 1
            return {w.worker_id for w in await gateway.workers(max_age_s=0)}

        assert await live() == {"steady", "dying"}
        deadline = time.monotonic() + WAIT_S
        while await live() != {"steady"}:  # "dying" beats no more
            assert time.monotonic() < deadline, "a dead worker stayed in the fleet view"
            await asyncio.sleep(0.02)
        assert await redis.zrange(channels.WORKERS, 0, -1) == [b"steady"]  # pruned by score
        await redis.delete(channels.worker("steady"))  # a heartbeat key gone before its score passed: not listed either
        assert await live() == set()
        await redis.echo("fleet-view-done")
        await asyncio.wait_for(watching, WAIT_S)
    await watcher.aclose()
    assert "SCAN" not in seen and "KEYS" not in seen
    assert seen.count("EVALSHA") == reads  # one command per read of the fleet


async def test_the_fleet_view(gateway: Gateway, redis: Redis) -> None:
    beat = await heartbeat(redis, "w1", busy=1, total=4)
    assert await gateway.workers(max_age_s=0) == [beat]
    assert (await gateway.models())[MODEL] == 1024 and PINNED in await gateway.models()
    await heartbeat(redis, "w1", busy=4, total=4)  # full: what follows waits
    streams = [await gateway.open(request(rid), wait=False) for rid in ("a", "b")]
    await redis.set(in_progress_key_prefix + "a", b"1")  # a worker started "a"
    row = next(m for m in (await gateway.queue_status()).models if m.model == MODEL)
    assert (row.waiting, row.running, row.workers, row.slots_total, row.slots_busy) == (1, 1, 1, 4, 4)
    assert row.oldest_wait_s >= 0
    positions = [await gateway.request_position(rid) for rid in ("a", "b", "nobody")]
    assert [(p.state, p.position) for p in positions] == [("running", None), ("waiting", 0), ("unknown", None)]
    stats = RequestStats("a", "w1", "stop", 2, 2, time.time())
    await redis.set(channels.stats("a"), msgspec.json.encode(stats))
    assert (await gateway.request_position("a")).state == "done"
    for stream in streams:
        await stream.close()


async def test_the_queue_bound_holds_under_a_burst(gateway: Gateway, redis: Redis) -> None:
    """40 requests at once against a bound of 2: exactly 2 admitted (a depth read and an enqueue as two steps let
    a whole burst see the same short queue; the admission script makes them one)."""
    await heartbeat(redis, "w1", busy=4)
    outcomes = await asyncio.gather(
        *(gateway.open(request(f"b{i}"), wait=False) for i in range(40)), return_exceptions=True
    )
    admitted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert (len(admitted), len(refused)) == (2, 38), [type(o).__name__ for o in outcomes]
    assert await redis.zcard(channels.queue(MODEL)) == 2
    stored = [key for key in await redis.keys(channels.request("*")) if key]
    assert len(stored) == 2  # a refused request leaves no record behind
    for stream in admitted:
        await stream.close()
