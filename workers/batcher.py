"""Continuous batching: one engine thread decodes every running sequence together; requests join between steps.

Async code talks to the batcher only through run() / embed() / cancel(); results come back on the event loop
through the `emit` callback (a list of (request_id, event) per decode step, so a step costs one publish round trip).
This module is the engine thread's loop (inbox, cancels, admission, embeddings between steps); its parts are
workers/prompt.py (a request's prompt tokens), workers/running.py (the running sequences, their slots and events),
workers/steps.py (what each llama_decode holds) and workers/outbox.py (a step's events to the event loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time

from herd.errors import EngineError, InvalidRequest, ServiceError
from herd.inference import EmbeddingRequest, Failed, GenerationRequest, Started
from herd.workers.embedder import EmbedJob
from herd.workers.enginestats import EngineMeter
from herd.workers.outbox import Emit, Outbox
from herd.workers.prompt import Prompts
from herd.workers.protocol import EngineLike
from herd.workers.running import Running
from herd.workers.sequence import Counters, Family, Seq
from herd.workers.slots import Slots
from herd.workers.speculate import Speculator
from herd.workers.steps import Stepper
from herd.workers.template import ChatTemplate
from opentelemetry.trace import Tracer

log = logging.getLogger("herd.worker.batcher")


class Batcher:
    def __init__(
        self,
        engine: EngineLike,
        worker_id: str,
        emit: Emit,
        max_tokens_cap: int,
        prefill_chunk: int,
        prefill_budget: int,
        tracer: Tracer | None = None,
        speculator: Speculator | None = None,
        prefill_pack: bool = False,
    ) -> None:
        self._engine = engine
        self._worker_id = worker_id
        prefill_chunk = min(prefill_chunk, engine.n_batch)
        template = ChatTemplate(engine.chat_template, engine.bos_text, engine.eos_text, engine.add_bos)
        self._inbox: queue.SimpleQueue[Seq | EmbedJob | None] = queue.SimpleQueue()
        self._embeds: list[EmbedJob] = []
        self._cancel_lock = threading.Lock()
        self._cancels: dict[str, float] = {}  # request id -> when; kept briefly so a late submit sees it
        self._waiting: list[Seq] = []
        self.counters = Counters()
        self.meter = EngineMeter(engine.n_ctx_seq * engine.max_seqs)
        self._outbox = Outbox(emit)
        self._prompts = Prompts(engine, template, max_tokens_cap, prefill_chunk)
        self._running = Running(
            engine,
            Slots(engine.max_seqs, exact=not prefill_pack),
            self._outbox,
            template,
            worker_id,
            self.counters,
            self.meter,
            tracer,
            speculator,
        )
        self._stepper = Stepper(
            engine,
            self._running,
            self.counters,
            self.meter,
            prefill_chunk,
            max(prefill_budget, 1),
            prefill_pack,
            speculator,
            self._flush,
            self._apply_cancels,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_done: concurrent.futures.Future[None] | None = None

    # ---- event-loop side -------------------------------------------------------------------------

    def start(self, engine_thread: concurrent.futures.ThreadPoolExecutor) -> None:
        """Run the decode loop on `engine_thread`, the one thread that does llama.cpp's work (see workers/jobs.py)."""
        self._loop = asyncio.get_running_loop()
        self._thread_done = engine_thread.submit(self._run)

    async def stop(self) -> None:
        self._inbox.put(None)
        if self._thread_done is not None:
            await asyncio.wait([asyncio.wrap_future(self._thread_done)])

    async def run(self, request: GenerationRequest) -> None:
        """Generate `request` to its end (events go out through `emit`); cancelling this awaitable cancels it."""
        assert self._loop is not None
        seq = Seq(req=request, family=Family(done=self._loop.create_future()))
        self._inbox.put(seq)
        try:
            await asyncio.shield(seq.family.done)
        except asyncio.CancelledError:
            self.cancel(request.id)
            raise

    async def embed(self, request: EmbeddingRequest) -> None:
        """Embed every input of `request` (the result goes out through `emit`); runs between decode steps."""
        assert self._loop is not None
        job = EmbedJob(req=request, done=self._loop.create_future())
        self._inbox.put(job)
        try:
            await asyncio.shield(job.done)
        except asyncio.CancelledError:
            self.cancel(request.id)
            raise

    def cancel(self, request_id: str) -> None:
        with self._cancel_lock:
            self._cancels[request_id] = time.monotonic()

    @property
    def alive(self) -> bool:
        return self._thread_done is not None and not self._thread_done.done()

    @property
    def busy(self) -> int:
        return len(self._running.active) + len(self._waiting)

    # ---- engine thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            idle = not self._running.active and not self._waiting and not self._embeds
            try:
                item = self._inbox.get(timeout=0.1) if idle else self._inbox.get_nowait()
                while True:  # drain everything that arrived, so they join this step together
                    if item is None:
                        return
                    if isinstance(item, EmbedJob):
                        self._embeds.append(item)
                    else:
                        self._waiting.append(item)
                    item = self._inbox.get_nowait()
            except queue.Empty:
                pass
            try:
                self._apply_cancels()
                self._admit()
                # Started goes out before the prefill: the API can commit its 200 meanwhile.
                self._flush()
                if self._embeds:
                    self._embed_step()
                if self._running.active:
                    self._stepper.step()
            except Exception as exc:
                # A failed step fails the sequences in it, loudly; the thread lives on for the next requests.
                log.exception("decode step failed")
                error = exc if isinstance(exc, ServiceError) else EngineError(f"generation failed: {exc}")
                for seq in list(self._running.active):
                    self._running.fail(seq, error)
            self._flush()

    def _flush(self) -> None:
        """What the engine produced so far goes to the event loop (and from there to Redis) now."""
        self._outbox.flush(self._loop)

    def _apply_cancels(self) -> None:
        with self._cancel_lock:
            if not self._cancels:
                return
            now = time.monotonic()
            cancels = dict(self._cancels)
            for rid, at in cancels.items():
                if now - at > 60.0:
                    del self._cancels[rid]
        for job in [j for j in self._embeds if j.req.id in cancels]:
            self._embeds.remove(job)
            self._outbox.resolved.append(job.done)
        for seq in [s for s in self._waiting if s.req.id in cancels]:
            self._waiting.remove(seq)
            self._running.cancel_waiting(seq)
        for seq in [s for s in self._running.active if s.req.id in cancels]:
            self._running.finish(seq, "cancelled")

    def _admit(self) -> None:
        # n > 1 takes its n slots at once, so its forks never wait; later requests wait behind it (no overtaking).
        while self._waiting and self._running.free >= min(self._waiting[0].req.n, self._engine.max_seqs):
            seq = self._waiting.pop(0)
            try:
                if seq.req.n > self._engine.max_seqs:
                    raise InvalidRequest(
                        f"n={seq.req.n} is more than the {self._engine.max_seqs} sequences a worker runs at once",
                        param="n",
                    )
                self._prompts.prepare(seq)
                seq.sampler = self._engine.new_sampler(seq.req.sampling, self._running.grammar(seq.req))
            except Exception as exc:
                self._running.fail(seq, exc if isinstance(exc, ServiceError) else EngineError(str(exc)), admitted=False)
                continue
            self._running.admit(seq)

    def _embed_step(self) -> None:
        """One micro-batch of the oldest embedding request (a long list of inputs takes turns with decoding)."""
        job, out = self._embeds[0], self._outbox
        try:
            if not job.started:
                job.prepare(self._engine)
                out.events.append((job.req.id, Started(0, self._worker_id, 0)))
            elif job.step(self._engine):
                out.events.append((job.req.id, job.result(seq=1)))
                self._embeds.pop(0)
                out.resolved.append(job.done)
        except Exception as exc:
            if isinstance(exc, ServiceError):
                error = exc
            else:
                log.exception("embedding failed")
                error = EngineError(f"embedding failed: {exc}")
            out.events.append((job.req.id, Failed(1 if job.started else 0, error.kind, error.message, error.param)))
            self._embeds.pop(0)
            out.resolved.append(job.done)
