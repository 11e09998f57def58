"""workers/jobs.py's HerdWorker in process on the real Redis, with a simulated engine (no model): how it counts its
slots when the API announces jobs to it, so that it hands a job back to the overflow only when it is really full.

The worker is started (arq's on_startup: its bus listens for announcements and heartbeats) but its arq poll loop is
not run: whatever starts a job here is the announcement (or a poll the worker asks for itself), never the 0.5 s
fallback poll. Hand-backs are seen by wrapping the bus's give_back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from arq.connections import ArqRedis
from herd import channels
from herd.config import ModelConfig, Settings
from herd.inference import GenerationRequest
from herd.workers.bus import WorkerBus
from herd.workers.jobs import HerdWorker, build_worker

DB = 2  # shared with tests/test_bus.py and tests/test_gateway.py (each flushes it first; no server process uses it)
MODEL = "jobs-model"
WAIT_S = 30  # bound on waits for things that happen within milliseconds


class Running:
    def __init__(self, worker: HerdWorker) -> None:
        self.worker = worker
        self.redis: ArqRedis = worker.pool
        self.bus: WorkerBus = worker.ctx["bus"]
        self.handed_back: list[tuple[str, ...]] = []
        give_back = self.bus.give_back

        async def recording(model: str, *job_ids: str) -> int:
            self.handed_back.append(job_ids)
            return await give_back(model, *job_ids)

        self.bus.give_back = recording  # type: ignore[method-assign]

    async def put(self, rid: str, max_tokens: int = 2) -> None:
        """What the API's admission writes for a job it gives this worker (without announcing it)."""
        request = GenerationRequest(id=rid, model=MODEL, prompt="hi", max_tokens=max_tokens, enqueued_at=time.time())
        await self.redis.set(channels.request(rid), msgspec.msgpack.encode(request), ex=60)
        await self.redis.enqueue_job("generate", rid, _job_id=rid, _queue_name=self.worker.queue_name)

    async def started_here(self, rid: str) -> bool:
        return await self.redis.get(channels.started(rid)) == self.bus.worker_id.encode()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


@pytest.fixture
async def started(redis_port: int) -> AsyncIterator[Callable[[int], Awaitable[Running]]]:
    workers: list[HerdWorker] = []

    async def start(max_seqs: int) -> Running:
        settings = Settings(redis_url=f"redis://127.0.0.1:{redis_port}/{DB}", max_seqs=max_seqs)
        worker = build_worker(settings, ModelConfig(name=MODEL, path="", n_ctx=4096), simulate_tokens_per_s=200.0)
        workers.append(worker)
        await worker.pool.flushdb()
        worker.ctx["redis"] = worker.pool  # as arq's Worker.main does before on_startup
        assert worker.on_startup is not None
        await worker.on_startup(worker.ctx)
        return Running(worker)

    yield start
    for worker in workers:
        for task in list(worker.tasks.values()):  # the jobs end (or, when a test failed, are stopped)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT_S)
        assert worker.on_shutdown is not None
        await worker.on_shutdown(worker.ctx)
        await worker.pool.aclose()


async def test_an_announcement_during_another_start_takes_the_other_free_slot(
    started: Callable[[int], Awaitable[Running]],
) -> None:
    run = await started(2)
    await run.put("a")
    await run.put("b")
    run.worker.announce("a")
    await asyncio.sleep(0)  # a's start is under way (waiting for Redis)
    run.worker.announce("b")  # the second of two free slots: it must start here, not go back to the overflow
    await eventually(lambda: run.started_here("b"))
    assert await run.started_here("a")
    assert run.handed_back == []


async def test_the_heartbeat_counts_a_job_whose_start_is_under_way(
    started: Callable[[int], Awaitable[Running]],
) -> None:
    # The API counts a job it sent only until the worker's next heartbeat: one written before the batch has the job
    # must still show its slot busy, or the API sends the worker one job too many.
    run = await started(2)
    await run.put("a", max_tokens=1000)
    status: Callable[[], Any] = run.worker.ctx["status"]
    assert (status().slots_busy, status().announced) == (0, 0)
    run.worker.announce("a", 1234)
    assert (status().slots_busy, status().announced) == (1, 1234)  # the API stops counting "a" itself
    await eventually(lambda: run.started_here("a"))
    assert status().slots_busy == 1
    run.worker.ctx["batcher"].cancel("a")


async def test_a_slot_takes_the_next_job_once_its_generation_ended(
    started: Callable[[int], Awaitable[Running]],
) -> None:
    # One slot, and arq's bookkeeping of the first job's end held up: the API saw that job finish (its last event)
    # and sent the next, which must start at once, not go back to the overflow for the few round trips arq takes.
    run = await started(1)
    settling, release = asyncio.Event(), asyncio.Event()
    settle = run.bus.settle

    async def held(model: str, job_id: str) -> None:
        settling.set()
        await release.wait()
        await settle(model, job_id)

    run.bus.settle = held  # type: ignore[method-assign]
    await run.put("first")
    await run.put("next")
    run.worker.announce("first")
    try:
        await asyncio.wait_for(settling.wait(), WAIT_S)  # first's tokens are all out; arq has not ended the job
        run.worker.announce("next")
        await eventually(lambda: run.started_here("next"))
        assert run.handed_back == []
    finally:
        release.set()


async def test_a_job_a_poll_took_for_a_slot_an_announcement_then_took_goes_back_to_the_overflow(
    started: Callable[[int], Awaitable[Running]],
) -> None:
    # The worker's poll takes "waiting" from the overflow for its one free slot; before the poll's reply comes, the
    # API's announcement of "sent" takes that slot. "waiting" must go back to the overflow for another worker, not
    # wait on this one's queue until its slot frees (a whole generation later).
    run = await started(1)
    await run.put("sent", max_tokens=1000)
    await run.put("waiting")
    await run.redis.zrem(run.worker.queue_name, "waiting")
    await run.redis.zadd(channels.overflow(MODEL), {"waiting": 1})
    run.worker.poll_soon()
    await asyncio.sleep(0)  # the poll's script is on its way: it takes "waiting" for the free slot
    run.worker.announce("sent")
    await eventually(lambda: run.started_here("sent"))
    await eventually(lambda: run.redis.zscore(channels.overflow(MODEL), "waiting"))
    assert await run.redis.zscore(run.worker.queue_name, "waiting") is None
    assert run.handed_back == [("waiting",)]
    assert await run.redis.get(channels.started("waiting")) is None
    await run.redis.zrem(channels.overflow(MODEL), "waiting")
    run.worker.ctx["batcher"].cancel("sent")
