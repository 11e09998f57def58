"""arq job functions and the worker process that runs them: arq only feeds the batcher."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from arq.constants import abort_jobs_ss
from arq.worker import Function, Worker, func
from herd import channels, redisconn, tracing
from herd.config import ModelConfig, Settings
from herd.inference import EmbeddingRequest, GenerationRequest, WorkerStatus
from herd.loading import IdleWatch
from herd.redisconn import REDIS_ERRORS
from herd.workers.batcher import Batcher
from herd.workers.bus import WorkerBus, new_worker_id
from herd.workers.engine import Engine
from herd.workers.simulated import SimulatedEngine
from herd.workers.speculate import Speculator

log = logging.getLogger("herd.worker")


async def generate(ctx: dict[str, Any], request_id: str) -> None:
    """One interactive generation. Runs at most once: a re-delivered job finds the request already started."""
    bus: WorkerBus = ctx["bus"]
    batcher: Batcher = ctx["batcher"]
    request = await bus.claim(request_id, GenerationRequest)
    if request is None:
        return
    try:
        await batcher.run(request)
    finally:
        _slot_freed(ctx, request_id)
        await bus.forget(request_id)  # refused or failed too: the record must not pin Redis memory until its TTL


async def embed(ctx: dict[str, Any], request_id: str) -> None:
    """One embedding request, run at most once like generate()."""
    bus: WorkerBus = ctx["bus"]
    batcher: Batcher = ctx["batcher"]
    request = await bus.claim(request_id, EmbeddingRequest)
    if request is None:
        return
    try:
        await batcher.embed(request)
    finally:
        _slot_freed(ctx, request_id)
        await bus.forget(request_id)


def _slot_freed(ctx: dict[str, Any], request_id: str) -> None:
    """The batch has let go of the request: its slot is free for the next job (HerdWorker.slot_freed), though arq's
    bookkeeping of the job (its result, its keys, its end) still takes a few round trips."""
    freed = ctx.get("slot_freed")
    if freed is not None:
        freed(request_id)


class HerdWorker(Worker):
    """arq's worker on a queue of its own (the API chooses the worker: README, Scale-out), event-driven: it starts a
    job the moment the API announces it, and takes waiting work the moment a slot frees, instead of at the next
    poll (arq's poll stays on as a slow fallback). A job it will not start (full, or stopping) goes back to the
    model's overflow for another worker.

    Its slots are taken from the moment it decides to start a job (`_opening`, then arq's job_counter) to the moment
    the batch lets go of the job (`_freed`, before arq's bookkeeping of its end), each counted once: the same span as
    the heartbeat's slots_busy and as the API's count of the jobs it sent and saw end, so that an announcement is
    handed back only when the worker is really full."""

    def __init__(self, *args: Any, model: str = "", reserved_slots: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model = model
        self._reserved_slots = reserved_slots
        self._polling = False
        self._poll_again = False
        self._opening: set[str] = set()  # jobs whose start is under way here (their slots are taken)
        self._freed: set[str] = set()  # jobs the batch let go of, which arq has not ended yet (their slots are free)
        self.announced = 0  # the stamp of the latest announcement handled (api/gateway.py's admission script)
        self.ctx["slot_freed"] = self.slot_freed  # for the job functions (generate, embed)
        self._shortcuts: set[asyncio.Task[object]] = set()  # strong references: the loop keeps only weak ones

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._shortcuts.add(task)
        task.add_done_callback(self._shortcuts.discard)

    @property
    def _bus(self) -> WorkerBus | None:
        bus: WorkerBus | None = self.ctx.get("bus")
        return bus

    @property
    def free_slots(self) -> int:
        return self.max_jobs - self.slots_taken

    @property
    def slots_taken(self) -> int:
        """Jobs starting or running here, less those whose generation ended (what the heartbeat says is busy)."""
        return self.job_counter + len(self._opening) - len(self._freed)

    @property
    def holding(self) -> tuple[str, ...]:
        """The jobs counted in slots_taken, by id (the heartbeat lists them: api/slots.py)."""
        running = (job for job, task in self.tasks.items() if not task.done() and job not in self._freed)
        return (*self._opening, *running)

    def slot_freed(self, job_id: str) -> None:
        """The job's generation ended: its slot takes the next job now (the oldest waiting one, if any)."""
        if job_id in self.tasks and not self.tasks[job_id].done():
            self._freed.add(job_id)
            self.poll_soon()

    def announce(self, job_id: str, stamp: int = 0) -> None:
        """The API put `job_id` on this worker's queue: start it now, or hand it on when no slot is free. The slot is
        taken here, synchronously: two announcements for one free slot must not both be started (the second would
        wait for a job to end, however long, instead of going to a free worker). The heartbeat reports the latest
        `stamp` handled, so the API knows which of its announcements the heartbeat's count includes."""
        self.announced = max(self.announced, stamp)
        if job_id in self.tasks or job_id in self._opening:
            return  # a poll found it first
        if self.allow_pick_jobs and self.free_slots > 0:
            self._opening.add(job_id)
            self._spawn(self._start_announced(job_id))
        elif self._bus is not None:  # its heartbeat said there was room; there is not (any more): another may have
            self._spawn(self._hand_back(self._bus, job_id))

    async def _hand_back(self, bus: WorkerBus, job_id: str) -> None:
        await bus.give_back(self._model, job_id)
        if self.allow_pick_jobs and self.free_slots > 0:
            self.poll_soon()  # a slot freed while the job went back: take it (or an older one) from the overflow now

    async def _start_announced(self, job_id: str) -> None:
        try:
            await self._begin(job_id)
        except Exception as exc:  # the poll loop will still find the job
            log.warning("could not start announced job %s: %s", job_id, exc)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs for the jobs a poll found ready, as many as there are free slots; the ones running here or
        being started are skipped without asking Redis, and the ones left over (an announcement took the slot a poll
        had taken a job from the overflow for) go back to the overflow for another worker."""
        left = []
        for raw in job_ids:
            job_id = raw.decode()
            if job_id in self.tasks or job_id in self._opening:
                continue
            if not self.allow_pick_jobs or self.free_slots <= 0:
                left.append(job_id)
                continue
            self._opening.add(job_id)
            await self._begin(job_id)
        if left and self._bus is not None:
            await self._bus.give_back(self._model, *left)

    async def _begin(self, job_id: str) -> None:
        """Start a job whose slot is taken (its id in `_opening`): arq's in-progress mark and herd's claim of the
        request in one command (WorkerBus.begin, where arq's start_jobs makes four round trips and the claim a fifth),
        then arq's run_job, counted as arq counts."""
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        try:
            score = None if self._bus is None else await self._bus.begin(self._model, job_id, ttl_ms)
        finally:
            self._opening.discard(job_id)
        if score is None:  # gone from this queue (handed back, cancelled), or started already
            return
        self.job_counter += 1  # arq's count of running jobs; its semaphore is not used by this start_jobs
        task = self.loop.create_task(self.run_job(job_id, score))
        task.add_done_callback(lambda _: self._job_ended(job_id))
        self.tasks[job_id] = task

    def _job_ended(self, job_id: str) -> None:
        self.job_counter -= 1
        if self._bus is not None:
            self._bus.unclaim(job_id)  # nothing to undo unless arq failed the job before its function ran
        if job_id in self._freed:
            self._freed.discard(job_id)  # its slot was free already
        else:
            self.poll_soon()  # a slot is free: the oldest waiting job should not wait for the next poll

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        super().handle_sig_wait_for_completion(signum)  # no new jobs; running ones finish
        if self._bus is not None:
            self._spawn(self._bus.give_back(self._model))  # the ones waiting here start elsewhere, now

    async def finish_job(self, job_id: str, finish: bool, *args: Any, **kwargs: Any) -> None:
        await super().finish_job(job_id, finish, *args, **kwargs)
        if finish and self._bus is not None:
            await self._bus.settle(self._model, job_id)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        await super().finish_failed_job(job_id, result_data)
        if self._bus is not None:
            await self._bus.settle(self._model, job_id)

    async def _poll_iteration(self) -> None:
        """arq's poll in one Redis command (WorkerBus.poll): the overflow and batch lines taken, this worker's own
        queue read and, only while jobs run here, arq's abort set read (a job not started yet reads its abort when it
        starts; a running one hears the cancel broadcast first, the abort set is its fallback). An idle worker's poll
        is that one script; arq's health check follows, every health_check_interval, as arq does it."""
        # arq lets a Redis error out of its poll loop, which ends that loop for good: the worker would then start
        # jobs only when announced, and a job announced while Redis was coming back would wait forever.
        try:
            pick = self.allow_pick_jobs and self.free_slots > 0
            aborts = self.allow_abort_jobs and bool(self.job_tasks)
            if (pick or aborts) and self._bus is not None:
                free = self.free_slots if pick else 0
                limit = self.queue_read_limit if pick else 0
                polled = await self._bus.poll(self._model, free, free - self._reserved_slots, limit, aborts)
                # arq keeps a running job on the queue until it ends: start_jobs skips the ones running here
                await self.start_jobs(polled.ready)
                await self._abort(polled.aborted)
            for job_id, task in list(self.tasks.items()):
                if task.done():
                    del self.tasks[job_id]
                    task.result()  # arq's: an error in run_job is raised here
            await self.heart_beat()
        except REDIS_ERRORS as exc:
            log.warning("polling the queue failed: %s", exc)

    async def _abort(self, job_ids: list[str]) -> None:
        """arq's _cancel_aborted_jobs on ids already read: cancel the ones running here, and drop them from the set."""
        aborted = {job_id for job_id in job_ids if job_id in self.job_tasks}
        for job_id in aborted:
            self.job_tasks[job_id].cancel()
        if aborted:
            self.aborting_tasks.update(aborted)
            await self.pool.zrem(abort_jobs_ss, *aborted)

    def poll_soon(self) -> None:
        if self._polling:
            self._poll_again = True
            return
        self._polling = True
        self._spawn(self._poll_now())

    async def _poll_now(self) -> None:
        try:
            while True:
                self._poll_again = False
                await self._poll_iteration()
                if not self._poll_again:
                    return
        except Exception as exc:  # the regular poll loop keeps running; this was only a shortcut
            log.warning("early poll failed: %s", exc)
        finally:
            self._polling = False


def build_worker(
    settings: Settings, model: ModelConfig, on_demand: bool = False, simulate_tokens_per_s: float = 0.0
) -> HerdWorker:
    """`on_demand`: a store model started for a request; it exits once idle past its keep_alive (Ollama's unload).
    `simulate_tokens_per_s`: TEST AND BENCHMARK ONLY, no model: a SimulatedEngine emitting tokens at that rate."""
    worker_id = new_worker_id()
    holder: dict[str, HerdWorker] = {}

    async def startup(ctx: dict[str, Any]) -> None:
        started = time.monotonic()
        # One thread does all of llama.cpp's work: loading, the speculator's timings, then the decode loop. With
        # OpenMP every thread that decodes gets a team of worker threads of its own, and with more of them than cores
        # every decode waits for wake-ups: timing on another thread first made each F16 decode 18-45 ms, not 11.
        engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herd-engine")
        ctx["engine_thread"] = engine_thread
        loop = asyncio.get_running_loop()
        engine: Engine | SimulatedEngine
        if simulate_tokens_per_s:  # test and benchmark only: no model (workers/simulated.py)
            engine = SimulatedEngine(settings.max_seqs, model.n_ctx, settings.n_batch, simulate_tokens_per_s)
        else:
            engine = await loop.run_in_executor(
                engine_thread, Engine, model, settings.max_seqs, settings.n_batch, settings.n_threads
            )
        speculator = None
        if model.speculate and isinstance(engine, Engine):
            speculator = await loop.run_in_executor(engine_thread, Speculator, model, engine, settings.n_threads)
        bus = WorkerBus(settings, ctx["redis"], worker_id)
        provider = tracing.setup("worker")
        batcher = Batcher(
            engine,
            worker_id,
            bus.emit,
            settings.max_tokens_cap,
            settings.prefill_chunk,
            settings.prefill_budget,
            tracing.tracer(provider, "herd.worker"),
            speculator,
            prefill_pack=settings.prefill_pack,
        )
        batcher.start(engine_thread)

        def on_message(kind: str, value: str) -> None:
            if kind == "cancel":
                batcher.cancel(value)
            else:  # "<job id> <stamp>"
                job_id, _, stamp = value.partition(" ")
                holder["worker"].announce(job_id, int(stamp or 0))

        def status() -> WorkerStatus:
            c = batcher.counters
            return WorkerStatus(
                worker_id=worker_id,
                models=(model.name,),
                n_ctx=engine.n_ctx_seq,
                slots_total=settings.max_seqs,
                # the jobs starting here count, though the batch has not seen them yet: once this heartbeat has
                # handled a job's announcement, the API takes its word (and `holding`) for that job (api/slots.py)
                slots_busy=max(batcher.busy, holder["worker"].slots_taken),
                announced=holder["worker"].announced,
                holding=holder["worker"].holding,
                tokens_generated=c.tokens_generated,
                requests_done=c.requests_done,
                requests_cancelled=c.requests_cancelled,
                tokens_drafted=c.tokens_drafted,
                tokens_accepted=c.tokens_accepted,
                engine=batcher.meter.snapshot(),
                pid=os.getpid(),
                host=socket.gethostname(),
                heartbeat_at=time.time(),
            )

        bus.start(model.name, on_message, status)
        ctx.update(
            status=status,
            engine=engine,
            speculator=speculator,
            bus=bus,
            batcher=batcher,
            watchdog=asyncio.create_task(watchdog(batcher)),
        )
        ctx["tracing"] = provider
        if on_demand:
            idle = IdleWatch(ctx["redis"], model.name, settings.keep_alive, settings.heartbeat_ttl_s * 2)
            every = min(1.0, settings.heartbeat_interval_s)
            ctx["idle"] = asyncio.create_task(idle.run(activity, unload, every))
        log.info("worker %s serves %s (loaded in %.1fs)", worker_id, model.name, time.monotonic() - started)

    async def watchdog(batcher: Batcher) -> None:
        """A worker whose engine thread died must not look alive: stop it, and its heartbeat with it."""
        while batcher.alive:  # noqa: ASYNC110 (the thread has no event to await)
            await asyncio.sleep(settings.heartbeat_interval_s)
        log.critical("the engine thread died; stopping this worker")
        os.kill(os.getpid(), signal.SIGTERM)

    def activity() -> tuple[int, int]:
        """Jobs finished so far and jobs running (arq's counters), for the idle watch of an on-demand worker."""
        worker = holder["worker"]
        return worker.jobs_complete + worker.jobs_failed + worker.jobs_retried, worker.job_counter

    def unload() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # arq drains, then the worker exits

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "idle" in ctx:
            ctx["idle"].cancel()
        if "watchdog" in ctx:
            ctx["watchdog"].cancel()
        if "batcher" in ctx:
            await ctx["bus"].give_back(model.name)  # anything still waiting here is another worker's to run
            await ctx["batcher"].stop()
            await ctx["bus"].stop()
            if ctx["speculator"] is not None:
                ctx["speculator"].close()
            ctx["engine"].close()
        if "engine_thread" in ctx:
            ctx["engine_thread"].shutdown(wait=False)
        if ctx.get("tracing") is not None:
            ctx["tracing"].shutdown()  # flushes the spans still queued

    functions: list[Function] = [func(generate, name="generate", max_tries=1), func(embed, name="embed", max_tries=1)]
    worker = HerdWorker(
        functions=functions,
        model=model.name,
        reserved_slots=min(settings.batch_reserved_slots, settings.max_seqs - 1),
        queue_name=channels.worker_queue(model.name, worker_id),  # its own: the API puts the jobs it chose it for
        redis_pool=redisconn.async_client(settings, socket_connect_timeout=2),  # TLS, ACL user, Sentinel
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=settings.max_seqs,  # jobs beyond the batch's slots stay visible in the Redis queue
        job_timeout=3600,
        keep_result=0,
        max_tries=1,  # an interactive request is never re-run behind its client's back
        allow_abort_jobs=True,
        poll_delay=0.5,  # a fallback: the API announces the jobs it puts here, a freed slot polls at once
        health_check_interval=5,
        log_results=False,
        handle_signals=True,
        job_completion_wait=settings.drain_timeout_s,  # SIGTERM drains: no new jobs, running ones finish
    )
    holder["worker"] = worker
    return worker
