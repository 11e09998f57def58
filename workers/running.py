"""The running sequences: admission into a KV slot, n > 1 forks, each sampled token turned into text and events, and
every way a sequence ends (finish, fail, cancel), giving its slot back with the prompt cache it holds."""

from __future__ import annotations

import time

from herd import reasoning, toolformat
from herd.errors import ServiceError
from herd.inference import (
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    Grammar,
    RequestStats,
    Started,
    TokenDelta,
    Usage,
)
from herd.workers.enginestats import EngineMeter
from herd.workers.outbox import Outbox
from herd.workers.protocol import EngineLike
from herd.workers.sequence import Counters, Seq
from herd.workers.slots import Slots, prompt_kinds
from herd.workers.spans import record_sequence, timeline
from herd.workers.speculate import Acceptance, Speculator
from herd.workers.template import ChatTemplate
from herd.workers.textstream import TextStream
from opentelemetry.trace import Tracer


class Running:
    """The admitted sequences (`active`, in admission order) and the slots they hold; what they send goes out through
    the outbox."""

    def __init__(
        self,
        engine: EngineLike,
        slots: Slots,
        outbox: Outbox,
        template: ChatTemplate,
        worker_id: str,
        counters: Counters,
        meter: EngineMeter,
        tracer: Tracer | None,
        speculator: Speculator | None,
    ) -> None:
        self._engine = engine
        self._slots = slots
        self._outbox = outbox
        self._template = template
        self._worker_id = worker_id
        self._counters = counters
        self._meter = meter
        self._tracer = tracer
        self._spec = speculator
        self._tool_markers = toolformat.marker_tokens(template.tool_format, engine.tokenize)
        if template.reasoning == "harmony":  # its channels show where reasoning ends
            self._tool_markers |= toolformat.marker_tokens("gpt-oss", engine.tokenize)
        # A reasoning block's markers are shown too (control tokens in Seed-OSS, Command-R, Gemma 4).
        self._reasoning_markers = reasoning.marker_tokens(template.reasoning, engine.tokenize)
        self.active: list[Seq] = []

    @property
    def free(self) -> int:
        """Slots free for new sequences."""
        return self._slots.free

    def kv_used(self) -> int:
        return sum(seq.kv_len for seq in self.active) + self._slots.cached

    def grammar(self, req: GenerationRequest) -> Grammar | None:
        """The request's grammar; without one, its tool calls' in the model's own syntax."""
        if req.grammar is not None or req.tool_constraint is None:
            return req.grammar
        return toolformat.grammar(self._template.tool_format, req.tool_constraint, req.tools)

    def admit(self, seq: Seq) -> None:
        """Start a prepared sequence with its sampler: the slot with the most of its prompt cached, and one for each
        of its request's other choices (n > 1 takes its n slots at once, so its forks never wait)."""
        for _ in range(seq.req.n - 1):
            slot = self._slots.take([], [])[0]
            self._engine.drop(slot)  # its cached prompt is given up: the fork's copy replaces it
            seq.family.fork_slots.append(slot)
        seq.seq_id, reused, held = self._slots.take(seq.prompt, seq.ends)
        if reused < held:
            self._engine.trim(seq.seq_id, reused)  # drop what the slot holds beyond the shared prefix
        seq.n_prefilled = seq.kv_len = seq.cached = reused
        seq.kinds = prompt_kinds(seq.ends)[:reused]  # reused: the kernels a cold run takes (Slots.take)
        self._meter.admitted(len(seq.prompt), reused)
        self._speculate(seq)
        seq.text = TextStream(seq.req.stop)
        seq.admitted_ns = time.perf_counter_ns()
        seq.admitted_wall_ns = time.time_ns()
        self.active.append(seq)
        self._outbox.events.append((seq.req.id, Started(seq.next_seq(), self._worker_id, len(seq.prompt))))

    def _speculate(self, seq: Seq) -> None:
        """Every sequence of a model with speculation drafts (workers/speculate.py says why any sampler may)."""
        if self._spec is not None:
            seq.acceptance = Acceptance()
            self._spec.reset(seq.seq_id)

    def fork(self, seq: Seq) -> list[Seq]:
        """Choices 1..n-1 of `seq`'s request: copies of its prefilled KV cells in the slots reserved for them."""
        family, forks = seq.family, list[Seq]()
        for slot in family.fork_slots:
            self._engine.fork(seq.seq_id, slot)
            fork = Seq(req=seq.req, family=family, index=len(forks) + 1, seq_id=slot, prompt=seq.prompt, ends=seq.ends)
            fork.n_prefilled = fork.kv_len = len(seq.prompt)
            fork.kinds = bytearray(seq.kinds)
            fork.max_tokens = seq.max_tokens
            fork.sampler = self._engine.new_sampler(seq.req.sampling, self.grammar(seq.req), seed_offset=fork.index)
            fork.text = TextStream(seq.req.stop)
            self._speculate(fork)
            fork.admitted_ns, fork.admitted_wall_ns = seq.admitted_ns, seq.admitted_wall_ns
            forks.append(fork)
        family.fork_slots = []
        family.live += len(forks)
        self.active.extend(forks)
        return forks

    # ---- what a sampled token sends ------------------------------------------------------------------------

    def on_token(self, seq: Seq, token: int, batch_index: int) -> None:
        """`token`, sampled for `seq` at `batch_index` of the last decode: its text goes out, or the sequence ends;
        otherwise it becomes the sequence's next token to decode."""
        if not seq.first_token_ns:
            seq.first_token_ns = time.perf_counter_ns()
        if self._engine.is_eog(token):
            self.finish(seq, "stop")
            return
        seq.generated += 1
        seq.out.append(token)
        self._counters.tokens_generated += 1
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
            self.finish(seq, "stop")
        elif seq.generated >= seq.max_tokens:
            self.finish(seq, "length")
        else:
            seq.next_token = token

    def _delta(self, seq: Seq, text: str, tokens: int) -> None:
        logprobs = tuple(seq.logprobs)
        seq.logprobs.clear()
        tool_format = thinking = None
        if not seq.first_sent:
            seq.first_sent = True
            tool_format = self._template.tool_format if seq.req.tool_constraint is not None else None
            thinking = seq.family.reasoning
        delta = TokenDelta(seq.next_seq(), text, tokens, seq.index, logprobs, tool_format, thinking)
        self._outbox.events.append((seq.req.id, delta))

    # ---- how a sequence ends -------------------------------------------------------------------------------

    def finish(self, seq: Seq, reason: FinishReason) -> None:
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
                self._meter.finished(first - seq.admitted_ns, now - first)
            self._trace(seq, usage, None)
            tokens = (*seq.prompt, *seq.out) if seq.req.return_tokens else ()
            self._outbox.events.append((seq.req.id, Finished(seq.next_seq(), reason, usage, tokens, seq.index)))
            self._counters.requests_done += 1
        else:
            self._counters.requests_cancelled += 1
            self._trace(seq, None, "cancelled")
        self._outbox.stats.append(
            RequestStats(seq.req.id, self._worker_id, reason, len(seq.prompt), seq.generated, time.time())
        )
        self._release(seq)

    def cancel_waiting(self, seq: Seq) -> None:
        """A sequence cancelled before admission: it sends nothing."""
        self._trace(seq, None, "cancelled")
        self._resolve(seq)
        self._counters.requests_cancelled += 1

    def fail(self, seq: Seq, exc: ServiceError, admitted: bool = True) -> None:
        self._outbox.events.append((seq.req.id, Failed(seq.next_seq(), exc.kind, exc.message, exc.param)))
        self._trace(seq, None, str(exc.kind))
        if admitted:
            self._release(seq, keep_cache=False)  # after a failed decode its cells are not to be trusted
        else:
            self._resolve(seq)

    def _trace(self, seq: Seq, usage: Usage | None, error_type: str | None) -> None:
        """The sequence's spans, however it ended (see workers/spans.py)."""
        if self._tracer is not None:
            times = timeline(seq.admitted_ns, seq.admitted_wall_ns, seq.first_token_ns)
            record_sequence(self._tracer, seq.req, self._worker_id, seq.index, times, usage, error_type)

    def _release(self, seq: Seq, keep_cache: bool = True) -> None:
        self.active.remove(seq)
        if keep_cache:
            held = (seq.prompt + seq.out)[: seq.kv_len]
            self._engine.trim(seq.seq_id, seq.kv_len)  # a draft's cells beyond it, if it stopped mid-draft
        else:
            held = []
            self._engine.drop(seq.seq_id)
        self._slots.give_back(seq.seq_id, held, seq.kinds)
        for slot in seq.family.fork_slots:  # reserved for forks that never came (the prompt failed or was cancelled)
            self._slots.give_back(slot, [], b"")
        seq.family.fork_slots = []
        if seq.sampler is not None:
            self._engine.free_sampler(seq.sampler)
        self._resolve(seq)

    def _resolve(self, seq: Seq) -> None:
        seq.family.live -= 1
        if seq.family.live == 0:
            self._outbox.resolved.append(seq.family.done)
