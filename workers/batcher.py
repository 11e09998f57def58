"""Continuous batching: one engine thread decodes every running sequence together; requests join between steps.

Async code talks to the batcher only through submit() / cancel(); results come back on the event loop
through the `emit` callback (a list of (request_id, event) per decode step, so a step costs one publish round trip).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from herd import reasoning, toolformat
from herd.errors import ContextLengthExceeded, EngineError, InvalidRequest, ServiceError
from herd.inference import (
    EmbeddingRequest,
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    Grammar,
    RequestStats,
    Started,
    StreamEvent,
    TokenDelta,
    TokenLogprob,
    Usage,
)
from herd.workers.embedder import EmbedJob
from herd.workers.enginestats import EngineMeter
from herd.workers.protocol import EngineLike, Sampler
from herd.workers.slots import Slots, prompt_chunks
from herd.workers.spans import record_sequence, timeline
from herd.workers.speculate import Acceptance, Speculator
from herd.workers.template import ChatTemplate
from herd.workers.textstream import TextStream
from opentelemetry.trace import Tracer

log = logging.getLogger("herd.worker.batcher")

Emit = Callable[[list[tuple[str, StreamEvent]], list[RequestStats]], None]


@dataclass(slots=True)
class _Family:
    """What the choices of one request share: its event numbering and the future that ends when all are done."""

    done: asyncio.Future[None]
    event_seq: int = 0
    live: int = 1  # choices not yet finished (the forks join when the prompt is prefilled)
    fork_slots: list[int] = field(default_factory=list)  # reserved at admission for choices 1..n-1
    reasoning: str | None = None  # how the choices' reasoning comes in their text (herd.reasoning.start)


@dataclass(slots=True)
class _Seq:
    req: GenerationRequest
    family: _Family
    index: int = 0  # the choice
    seq_id: int = -1
    prompt: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # where its prefill chunks end (workers/slots.py)
    n_prefilled: int = 0
    kv_len: int = 0  # tokens of prompt + out whose KV cells are in the slot
    cached: int = 0  # prompt tokens found in the slot's cache at admission
    out: list[int] = field(default_factory=list)
    max_tokens: int = 0
    sampler: Sampler | None = None
    text: TextStream | None = None
    next_token: int = -1  # sampled, not yet in the KV cache
    generated: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent
    admitted_ns: int = 0
    admitted_wall_ns: int = 0
    first_token_ns: int = 0
    acceptance: Acceptance | None = None  # its drafts' recent acceptance; None: this sequence does not speculate
    drafted: int = 0
    accepted: int = 0
    first_sent: bool = False  # the choice's first delta went out (it names the tool and reasoning formats)

    def next_seq(self) -> int:
        self.family.event_seq += 1
        return self.family.event_seq - 1


@dataclass(slots=True)
class Counters:
    tokens_generated: int = 0
    requests_done: int = 0
    requests_cancelled: int = 0
    tokens_drafted: int = 0
    tokens_accepted: int = 0


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
        self._pack = prefill_pack
        self._spec = speculator
        self._tracer = tracer
        self._prefill_chunk = min(prefill_chunk, engine.n_batch)
        self._prefill_budget = max(prefill_budget, 1)
        self._worker_id = worker_id
        self._emit = emit
        self._cap = max_tokens_cap
        self._template = ChatTemplate(engine.chat_template, engine.bos_text, engine.eos_text, engine.add_bos)
        self._tool_markers = toolformat.marker_tokens(self._template.tool_format, engine.tokenize)
        if self._template.reasoning == "harmony":  # its channels show where reasoning ends
            self._tool_markers |= toolformat.marker_tokens("gpt-oss", engine.tokenize)
        # A reasoning block's markers are shown too (control tokens in Seed-OSS, Command-R, Gemma 4).
        self._reasoning_markers = reasoning.marker_tokens(self._template.reasoning, engine.tokenize)
        self._inbox: queue.SimpleQueue[_Seq | EmbedJob | None] = queue.SimpleQueue()
        self._embeds: list[EmbedJob] = []
        self._cancel_lock = threading.Lock()
        self._cancels: dict[str, float] = {}  # request id -> when; kept briefly so a late submit sees it
        self._waiting: list[_Seq] = []
        self._active: list[_Seq] = []
        self._slots = Slots(engine.max_seqs)
        self._events: list[tuple[str, StreamEvent]] = []
        self._stats: list[RequestStats] = []
        self._resolved: list[asyncio.Future[None]] = []
        self.counters = Counters()
        self.meter = EngineMeter(engine.n_ctx_seq * engine.max_seqs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: concurrent.futures.Future[None] | None = None

    # ---- event-loop side -------------------------------------------------------------------------

    def start(self, engine_thread: concurrent.futures.ThreadPoolExecutor) -> None:
        """Run the decode loop on `engine_thread`, the one thread that does llama.cpp's work (see workers/jobs.py)."""
        self._loop = asyncio.get_running_loop()
        self._running = engine_thread.submit(self._run)

    async def stop(self) -> None:
        self._inbox.put(None)
        if self._running is not None:
            await asyncio.wait([asyncio.wrap_future(self._running)])

    async def run(self, request: GenerationRequest) -> None:
        """Generate `request` to its end (events go out through `emit`); cancelling this awaitable cancels it."""
        assert self._loop is not None
        seq = _Seq(req=request, family=_Family(done=self._loop.create_future()))
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
        return self._running is not None and not self._running.done()

    @property
    def busy(self) -> int:
        return len(self._active) + len(self._waiting)

    # ---- engine thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            idle = not self._active and not self._waiting and not self._embeds
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
                self._flush()  # Started goes out before the prefill: the API can commit its 200 meanwhile
                if self._embeds:
                    self._embed_step()
                if self._active:
                    self._step()
            except Exception as exc:
                # A failed step fails the sequences in it, loudly; the thread lives on for the next requests.
                log.exception("decode step failed")
                error = exc if isinstance(exc, ServiceError) else EngineError(f"generation failed: {exc}")
                for seq in list(self._active):
                    self._fail(seq, error)
            self._flush()

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
            self._resolved.append(job.done)
        for seq in [s for s in self._waiting if s.req.id in cancels]:
            self._waiting.remove(seq)
            self._trace(seq, None, "cancelled")
            self._resolve(seq)
            self.counters.requests_cancelled += 1
        for seq in [s for s in self._active if s.req.id in cancels]:
            self._finish(seq, "cancelled")

    def _admit(self) -> None:
        # n > 1 takes its n slots at once, so its forks never wait; later requests wait behind it (no overtaking).
        while self._waiting and self._slots.free >= min(self._waiting[0].req.n, self._engine.max_seqs):
            seq = self._waiting.pop(0)
            try:
                if seq.req.n > self._engine.max_seqs:
                    raise InvalidRequest(
                        f"n={seq.req.n} is more than the {self._engine.max_seqs} sequences a worker runs at once",
                        param="n",
                    )
                self._prepare(seq)
                seq.sampler = self._engine.new_sampler(seq.req.sampling, self._grammar(seq.req))
            except Exception as exc:
                self._fail(seq, exc if isinstance(exc, ServiceError) else EngineError(str(exc)), admitted=False)
                continue
            for _ in range(seq.req.n - 1):
                slot = self._slots.take([], [])[0]
                self._engine.drop(slot)  # its cached prompt is given up: the fork's copy replaces it
                seq.family.fork_slots.append(slot)
            seq.seq_id, reused, held = self._slots.take(seq.prompt, seq.ends)
            if reused < held:
                self._engine.trim(seq.seq_id, reused)  # drop what the slot holds beyond the shared prefix
            seq.n_prefilled = seq.kv_len = seq.cached = reused
            self.meter.admitted(len(seq.prompt), reused)
            self._speculate(seq)
            seq.text = TextStream(seq.req.stop)
            seq.admitted_ns = time.perf_counter_ns()
            seq.admitted_wall_ns = time.time_ns()
            self._active.append(seq)
            self._events.append((seq.req.id, Started(seq.next_seq(), self._worker_id, len(seq.prompt))))

    def _prepare(self, seq: _Seq) -> None:
        req, engine = seq.req, self._engine
        if req.messages is not None:
            text, add_special = self._template.render(req.messages, req.tools, req.reasoning), engine.add_bos
            seq.family.reasoning = reasoning.start(self._template.reasoning, text)
        else:
            text, add_special = req.prompt or "", True
        if req.suffix is not None:
            seq.prompt = self._infill(text, req.suffix)
        elif req.context_tokens:
            if max(req.context_tokens) >= engine.n_vocab:
                raise InvalidRequest("context holds token ids this model does not have", param="context")
            # The earlier exchange already begins the text (with its BOS, if any): the new part adds none.
            seq.prompt = [*req.context_tokens, *engine.tokenize(text, add_special=False)]
        else:
            seq.prompt = engine.tokenize(text, add_special=add_special)
        if not seq.prompt and engine.bos_id >= 0:
            seq.prompt = [engine.bos_id]  # an empty completion prompt continues from the start of a text
        if not seq.prompt:
            raise InvalidRequest("the prompt is empty", param="prompt")
        n_prompt, n_ctx = len(seq.prompt), engine.n_ctx_seq
        room = n_ctx - n_prompt
        if (req.max_tokens is not None and req.max_tokens > room and not req.fit_context) or room < 1:
            asked = req.max_tokens or 1
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{n_prompt + asked} tokens ({n_prompt} in the messages, {asked} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages" if req.messages is not None else "prompt",
            )
        seq.max_tokens = min(req.max_tokens or room, room, self._cap)
        seq.ends = prompt_chunks(seq.prompt, engine, self._prefill_chunk)

    def _infill(self, prefix: str, suffix: str) -> list[int]:
        engine = self._engine
        fim = engine.infill_tokens()
        if fim is None:
            raise InvalidRequest(
                "this model has no fill-in-the-middle tokens, so 'suffix' is not supported", param="suffix"
            )
        pre, suf, mid = fim
        bos = [engine.bos_id] if engine.add_bos and engine.bos_id >= 0 else []
        body = engine.tokenize(prefix, add_special=False)
        return [*bos, pre, *body, suf, *engine.tokenize(suffix, add_special=False), mid]

    def _embed_step(self) -> None:
        """One micro-batch of the oldest embedding request (a long list of inputs takes turns with decoding)."""
        job = self._embeds[0]
        try:
            if not job.started:
                job.prepare(self._engine)
                self._events.append((job.req.id, Started(0, self._worker_id, 0)))
            elif job.step(self._engine):
                self._events.append((job.req.id, job.result(seq=1)))
                self._embeds.pop(0)
                self._resolved.append(job.done)
        except Exception as exc:
            if isinstance(exc, ServiceError):
                error = exc
            else:
                log.exception("embedding failed")
                error = EngineError(f"embedding failed: {exc}")
            self._events.append((job.req.id, Failed(1 if job.started else 0, error.kind, error.message, error.param)))
            self._embeds.pop(0)
            self._resolved.append(job.done)

    def _step(self) -> None:
        """Prefill chunks of new prompts, then one llama_decode for the next token of every generating sequence.

        Batching must not change what a request generates, and llama.cpp's arithmetic depends on how tokens are
        grouped into micro-batches. So a prompt is always prefilled in the same chunks (its messages, cut every
        C tokens: workers/slots.py), each a llama_decode of its own, whatever else is running (and a cached prefix
        ends where one of them does); and the decode step holds exactly one token per sequence.
        """
        decoding = [seq for seq in self._active if seq.next_token >= 0]
        if self._pack:
            self._step_packed(decoding)
            return
        # While sequences wait on this step for their next token, prefill only a few chunks so they keep flowing.
        budget = self._prefill_budget if decoding else self._engine.n_batch
        for seq in [s for s in self._active if s.next_token < 0]:  # admission order: oldest prompt first
            while budget > 0 and seq.n_prefilled < len(seq.prompt):
                budget -= self._prefill(seq)
            if budget <= 0:
                break
        if not decoding:
            return
        decoding.sort(key=_by_seq_id)
        if self._spec is not None:
            self._step_speculative(decoding, self._spec)
            return  # llama.cpp keeps consecutive sequence ids in one micro-batch
        self._engine.decode(
            [seq.next_token for seq in decoding],
            [seq.kv_len for seq in decoding],
            [seq.seq_id for seq in decoding],
            [True] * len(decoding),
        )
        self.meter.stepped(len(decoding), 0, self._kv_used())
        for index, seq in enumerate(decoding):
            seq.kv_len += 1
            assert seq.sampler is not None
            self._on_token(seq, self._engine.sample(seq.sampler, index), index)

    def _step_packed(self, decoding: list[_Seq]) -> None:
        """HERD_PREFILL_PACK: one llama_decode for every generating sequence's next token and as many prompt tokens
        of the waiting prompts as fit, oldest prompt first (llama-server's way). Fewer, fuller decode calls; but a
        prompt's arithmetic then depends on what it shared its calls with, so greedy output may differ between a
        request alone and among others, and a cached prefix is reused as computed, not recomputed exactly.

        While sequences decode, a step carries at most `prefill_chunk` prompt tokens: the largest step the default
        mode takes, so running streams' inter-token latency has the same bound.
        """
        with_spec = self._spec is not None and bool(decoding)  # its draft tokens take their own decode call
        room = self._engine.n_batch - (0 if with_spec else len(decoding))
        budget = min(self._prefill_chunk if decoding else room, room)
        plan: list[tuple[_Seq, int, int]] = []  # (prompt, first token, end) of this step's prefill
        for seq in [s for s in self._active if s.next_token < 0 and s.n_prefilled < len(s.prompt)]:
            if budget <= 0:
                break
            end = min(len(seq.prompt), seq.n_prefilled + budget)
            plan.append((seq, seq.n_prefilled, end))
            budget -= end - seq.n_prefilled
        stepping = [] if with_spec else decoding
        # Sequence ids in order: llama.cpp puts consecutive sequences' tokens in one micro-batch (workers/slots.py).
        parts = sorted(
            [(seq.seq_id, seq, seq.kv_len, seq.kv_len + 1) for seq in stepping]
            + [(seq.seq_id, seq, start, end) for seq, start, end in plan],
            key=lambda part: part[0],
        )
        tokens: list[int] = []
        positions: list[int] = []
        ids: list[int] = []
        logits: list[bool] = []
        at: dict[int, int] = {}  # sequence id -> batch index of its logits
        for seq_id, seq, start, end in parts:
            tokens += [seq.next_token] if seq.next_token >= 0 else seq.prompt[start:end]
            positions += range(start, end)
            ids += [seq_id] * (end - start)
            logits += [False] * (end - start - 1) + [seq.next_token >= 0 or end == len(seq.prompt)]
            at[seq_id] = len(tokens) - 1
        if tokens:
            self._engine.decode(tokens, positions, ids, logits)
        if stepping:
            self.meter.stepped(len(stepping), 0, self._kv_used())
        for seq in stepping:
            seq.kv_len += 1
            assert seq.sampler is not None
            self._on_token(seq, self._engine.sample(seq.sampler, at[seq.seq_id]), at[seq.seq_id])
        for seq, _, end in plan:
            seq.n_prefilled = seq.kv_len = end
            if end == len(seq.prompt):
                index = at[seq.seq_id]
                for choice in (seq, *self._fork(seq)):
                    assert choice.sampler is not None
                    self._on_token(choice, self._engine.sample(choice.sampler, index), index)
        if with_spec:
            assert self._spec is not None
            decoding.sort(key=_by_seq_id)
            self._step_speculative(decoding, self._spec)

    def _kv_used(self) -> int:
        return sum(seq.kv_len for seq in self._active) + self._slots.cached

    def _speculate(self, seq: _Seq) -> None:
        """Every sequence of a model with speculation drafts (workers/speculate.py says why any sampler may)."""
        if self._spec is not None:
            seq.acceptance = Acceptance()
            self._spec.reset(seq.seq_id)

    def _step_speculative(self, decoding: list[_Seq], spec: Speculator) -> None:
        """One decode for every sequence's next token and its draft; each keeps what the model agrees with."""
        items = []
        for seq in decoding:
            room = min(seq.max_tokens - seq.generated, self._engine.n_ctx_seq - seq.kv_len) - 1
            rate = seq.acceptance.rate if seq.acceptance is not None else 0.0
            items.append((seq.seq_id, seq.prompt + seq.out, max(room, 0), rate))
        drafts = spec.drafts(items)
        tokens: list[int] = []
        positions: list[int] = []
        ids: list[int] = []
        plan: list[tuple[_Seq, int, list[int]]] = []
        for seq, draft in zip(decoding, drafts, strict=True):
            plan.append((seq, len(tokens), draft))
            tokens += [seq.next_token, *draft]
            positions += range(seq.kv_len, seq.kv_len + 1 + len(draft))
            ids += [seq.seq_id] * (1 + len(draft))
        started = time.perf_counter()
        self._engine.decode(tokens, positions, ids, [True] * len(tokens))
        spec.cost.observe(len(tokens), time.perf_counter() - started)
        self.meter.stepped(len(tokens), sum(1 for draft in drafts if draft), self._kv_used())
        for seq, start, draft in plan:
            assert seq.sampler is not None
            base, accepted = seq.kv_len, 0
            # Draw each position's token from the model's own sampler; a draft token stands while the draws agree.
            emitted = [self._engine.sample(seq.sampler, start)]
            while accepted < len(draft) and emitted[-1] == draft[accepted]:
                accepted += 1
                emitted.append(self._engine.sample(seq.sampler, start + accepted))
            if seq.acceptance is not None:
                self._engine.trim(seq.seq_id, base + 1 + accepted)  # the rejected draft's cells
                spec.verified(seq.seq_id, len(seq.prompt) + len(seq.out), accepted)
                seq.drafted += len(draft)
                seq.accepted += accepted
                self.counters.tokens_drafted += len(draft)
                self.counters.tokens_accepted += accepted
                seq.acceptance.record(len(draft), accepted)
            for i, token in enumerate(emitted):
                seq.kv_len = base + 1 + i
                seq.next_token = -1
                self._on_token(seq, token, start + i)
                if seq.next_token < 0:  # finished
                    break

    def _prefill(self, seq: _Seq) -> int:
        """The next chunk of `seq`'s prompt; samples its first token when the prompt is done."""
        start = seq.n_prefilled
        end = seq.ends[bisect.bisect_right(seq.ends, start)]
        last = end == len(seq.prompt)
        n = end - start
        self._engine.decode(seq.prompt[start:end], range(start, end), [seq.seq_id] * n, [False] * (n - 1) + [last])
        seq.n_prefilled = seq.kv_len = end
        if last:
            forks = self._fork(seq)  # before the first sample: every choice draws from the prompt's logits
            for choice in (seq, *forks):
                assert choice.sampler is not None
                self._on_token(choice, self._engine.sample(choice.sampler, n - 1), n - 1)
        return n

    def _fork(self, seq: _Seq) -> list[_Seq]:
        """Choices 1..n-1 of `seq`'s request: copies of its prefilled KV cells in the slots reserved for them."""
        family, forks = seq.family, list[_Seq]()
        for slot in family.fork_slots:
            self._engine.fork(seq.seq_id, slot)
            fork = _Seq(req=seq.req, family=family, index=len(forks) + 1, seq_id=slot, prompt=seq.prompt, ends=seq.ends)
            fork.n_prefilled = fork.kv_len = len(seq.prompt)
            fork.max_tokens = seq.max_tokens
            fork.sampler = self._engine.new_sampler(seq.req.sampling, self._grammar(seq.req), seed_offset=fork.index)
            fork.text = TextStream(seq.req.stop)
            self._speculate(fork)
            fork.admitted_ns, fork.admitted_wall_ns = seq.admitted_ns, seq.admitted_wall_ns
            forks.append(fork)
        family.fork_slots = []
        family.live += len(forks)
        self._active.extend(forks)
        return forks

    def _on_token(self, seq: _Seq, token: int, batch_index: int) -> None:
        if not seq.first_token_ns:
            seq.first_token_ns = time.perf_counter_ns()
        if self._engine.is_eog(token):
            self._finish(seq, "stop")
            return
        seq.generated += 1
        seq.out.append(token)
        self.counters.tokens_generated += 1
        if seq.req.logprobs is not None:
            seq.logprobs.append(self._engine.logprobs(batch_index, token, seq.req.logprobs))
        assert seq.text is not None
        # A request with tools sees its model's call markers, control tokens that text otherwise leaves out; so does
        # one whose model reasons on harmony channels (the markers are gpt-oss's then).
        marked = seq.req.tool_constraint is not None or seq.family.reasoning == "harmony"
        special = (marked and token in self._tool_markers) or (
            seq.family.reasoning is not None and token in self._reasoning_markers
        )
        text = seq.text.feed(self._engine.piece(token, special))
        if text:
            self._delta(seq, text, 1)
        if seq.text.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _finish(self, seq: _Seq, reason: FinishReason) -> None:
        assert seq.text is not None
        if reason != "cancelled":
            rest = seq.text.flush()
            if rest:
                self._delta(seq, rest, 0)
            now = time.perf_counter_ns()
            first = seq.first_token_ns or now
            usage = Usage(
                prompt_tokens=len(seq.prompt),
                completion_tokens=seq.generated,
                cached_tokens=seq.cached,
                prompt_eval_ns=first - seq.admitted_ns,
                eval_ns=now - first,
                queue_ns=max(0, int((time.time() - seq.req.enqueued_at) * 1e9) - (now - seq.admitted_ns)),
                speculative=seq.acceptance is not None,
                drafted_tokens=seq.drafted,
                accepted_tokens=seq.accepted,
            )
            if seq.index == 0:
                self.meter.finished(first - seq.admitted_ns, now - first)
            self._trace(seq, usage, None)
            tokens = (*seq.prompt, *seq.out) if seq.req.return_tokens else ()
            self._events.append((seq.req.id, Finished(seq.next_seq(), reason, usage, tokens, seq.index)))
            self.counters.requests_done += 1
        else:
            self.counters.requests_cancelled += 1
            self._trace(seq, None, "cancelled")
        self._stats.append(
            RequestStats(seq.req.id, self._worker_id, reason, len(seq.prompt), seq.generated, time.time())
        )
        self._release(seq)

    def _delta(self, seq: _Seq, text: str, tokens: int) -> None:
        logprobs = tuple(seq.logprobs)
        seq.logprobs.clear()
        tool_format = thinking = None
        if not seq.first_sent:
            seq.first_sent = True
            tool_format = self._template.tool_format if seq.req.tool_constraint is not None else None
            thinking = seq.family.reasoning
        delta = TokenDelta(seq.next_seq(), text, tokens, seq.index, logprobs, tool_format, thinking)
        self._events.append((seq.req.id, delta))

    def _grammar(self, req: GenerationRequest) -> Grammar | None:
        """The request's grammar; without one, its tool calls' in the model's own syntax."""
        if req.grammar is not None or req.tool_constraint is None:
            return req.grammar
        return toolformat.grammar(self._template.tool_format, req.tool_constraint, req.tools)

    def _trace(self, seq: _Seq, usage: Usage | None, error_type: str | None) -> None:
        """The sequence's spans, however it ended (see workers/spans.py)."""
        if self._tracer is not None:
            times = timeline(seq.admitted_ns, seq.admitted_wall_ns, seq.first_token_ns)
            record_sequence(self._tracer, seq.req, self._worker_id, seq.index, times, usage, error_type)

    def _fail(self, seq: _Seq, exc: ServiceError, admitted: bool = True) -> None:
        self._events.append((seq.req.id, Failed(seq.next_seq(), exc.kind, exc.message, exc.param)))
        self._trace(seq, None, str(exc.kind))
        if admitted:
            self._release(seq, keep_cache=False)  # after a failed decode its cells are not to be trusted
        else:
            self._resolve(seq)

    def _release(self, seq: _Seq, keep_cache: bool = True) -> None:
        self._active.remove(seq)
        if keep_cache:
            held = (seq.prompt + seq.out)[: seq.kv_len]
            self._engine.trim(seq.seq_id, seq.kv_len)  # a draft's cells beyond it, if it stopped mid-draft
        else:
            held = []
            self._engine.drop(seq.seq_id)
        self._slots.give_back(seq.seq_id, held, seq.ends)
        for slot in seq.family.fork_slots:  # reserved for forks that never came (the prompt failed or was cancelled)
            self._slots.give_back(slot, [], [])
        seq.family.fork_slots = []
        if seq.sampler is not None:
            self._engine.free_sampler(seq.sampler)
        self._resolve(seq)

    def _resolve(self, seq: _Seq) -> None:
        seq.family.live -= 1
        if seq.family.live == 0:
            self._resolved.append(seq.family.done)

    def _flush(self) -> None:
        """Hand this step's events to the event loop, then wake the jobs that ended (in that order)."""
        if self._events or self._stats or self._resolved:
            events, stats, resolved = self._events, self._stats, self._resolved
            self._events, self._stats, self._resolved = [], [], []
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._deliver, events, stats, resolved)

    def _deliver(
        self, events: list[tuple[str, StreamEvent]], stats: list[RequestStats], resolved: list[asyncio.Future[None]]
    ) -> None:
        if events or stats:
            self._emit(events, stats)
        for future in resolved:
            if not future.done():
                future.set_result(None)


def _by_seq_id(seq: _Seq) -> int:
    return seq.seq_id
