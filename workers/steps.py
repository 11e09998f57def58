"""What each llama_decode of a step holds: the waiting prompts' prefill chunks and one token of every generating
sequence (the default), all of them in one call (HERD_PREFILL_PACK), or every sequence's token with its draft
(speculative decoding); then the sampling of what the decode left."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

from herd.workers.enginestats import EngineMeter
from herd.workers.protocol import EngineLike
from herd.workers.running import Running
from herd.workers.sequence import Counters, Seq, by_seq_id
from herd.workers.slots import KIND_ROW, KIND_UNSURE, call_kind, call_kinds
from herd.workers.speculate import Speculator

SHARE = 64  # while sequences wait on a step: the most prompt tokens one call holds (unless its first chunk is more)


class Stepper:
    """Runs one step over `running`'s sequences each time step() is called (on the engine thread)."""

    def __init__(
        self,
        engine: EngineLike,
        running: Running,
        counters: Counters,
        meter: EngineMeter,
        prefill_chunk: int,
        prefill_budget: int,
        prefill_pack: bool,
        speculator: Speculator | None,
        flush: Callable[[], None],
        between: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._flush = flush  # hands what the step produced so far to the event loop (the batcher's outbox)
        self._between = between  # runs between a step's prefill calls (the batcher applies cancels that came)
        self._running = running
        self._counters = counters
        self._meter = meter
        self._prefill_chunk = prefill_chunk
        self._prefill_budget = prefill_budget
        self._pack = prefill_pack
        self._spec = speculator

    def step(self) -> None:
        """Prefill chunks of new prompts, then one llama_decode for the next token of every generating sequence.

        Batching must not change what a request generates. llama.cpp's CPU arithmetic for a token does not depend
        on the other tokens of its call except through the attention kernel, which depends on how many tokens of
        the sequence a micro-batch holds (workers/slots.py). So a prompt is prefilled in chunks that are a function
        of its own tokens (its messages, cut every C tokens), each chunk in one call, and the chunks of several
        prompts share a call only where each keeps the kernel it takes alone; the decode step holds one token per
        sequence.
        """
        decoding = self._generating()
        if self._pack:
            self._step_packed(decoding)
            return
        # While sequences wait on this step for their next token, prefill at most the budget, so they keep flowing,
        # in calls of at most SHARE tokens (or one prompt's chunk, where that is more), so each prompt's first token
        # leaves after a short call of its own; a prompt that starts generating in the step waits on it from then
        # on, and takes its next token in it.
        waiting = bool(decoding)
        budget = self._prefill_budget if waiting else self._engine.n_batch
        while budget > 0 and (parts := self._next_parts(min(budget, SHARE) if waiting else budget)):
            budget -= self._prefill(parts)
            if not waiting and self._generating():
                waiting = True
                budget = min(budget, self._prefill_budget)
            self._between()  # a step may prefill for seconds on a CPU: a cancel takes effect before the next call
        decoding = self._generating()
        if not decoding:
            return
        decoding.sort(key=by_seq_id)
        if self._spec is not None:
            self._step_speculative(decoding, self._spec)
            return  # llama.cpp keeps consecutive sequence ids in one micro-batch
        self._engine.decode(
            [seq.next_token for seq in decoding],
            [seq.kv_len for seq in decoding],
            [seq.seq_id for seq in decoding],
            [True] * len(decoding),
        )
        self._meter.stepped(len(decoding), 0, self._running.kv_used())
        ids = {seq.seq_id for seq in decoding}
        for index, seq in enumerate(decoding):
            seq.kv_len += 1
            # llama.cpp puts runs of consecutive sequence ids in one micro-batch: a token with a neighbour there
            # took the kernel a short prefill chunk takes; a lone one too, up to LONE_CELLS (workers/slots.py).
            beside = seq.seq_id - 1 in ids or seq.seq_id + 1 in ids
            seq.kinds.append(KIND_ROW if beside else call_kind(1, seq.kv_len))
            assert seq.sampler is not None
            self._running.on_token(seq, self._engine.sample(seq.sampler, index), index)

    def _step_packed(self, decoding: list[Seq]) -> None:
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
        plan: list[tuple[Seq, int, int]] = []  # (prompt, first token, end) of this step's prefill
        for seq in [s for s in self._running.active if s.next_token < 0 and s.n_prefilled < len(s.prompt)]:
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
            self._meter.stepped(len(stepping), 0, self._running.kv_used())
        for seq in stepping:
            seq.kv_len += 1
            seq.kinds.append(KIND_UNSURE)  # packed calls make no promise (Slots reuses them as they are)
            assert seq.sampler is not None
            self._running.on_token(seq, self._engine.sample(seq.sampler, at[seq.seq_id]), at[seq.seq_id])
        for seq, _, end in plan:
            seq.kinds += bytes([KIND_UNSURE]) * (end - seq.kv_len)
            seq.n_prefilled = seq.kv_len = end
            if end == len(seq.prompt):
                index = at[seq.seq_id]
                for choice in (seq, *self._running.fork(seq)):
                    assert choice.sampler is not None
                    self._running.on_token(choice, self._engine.sample(choice.sampler, index), index)
        if with_spec:
            assert self._spec is not None
            decoding.sort(key=by_seq_id)
            self._step_speculative(decoding, self._spec)

    def _step_speculative(self, decoding: list[Seq], spec: Speculator) -> None:
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
        plan: list[tuple[Seq, int, list[int]]] = []
        for seq, draft in zip(decoding, drafts, strict=True):
            plan.append((seq, len(tokens), draft))
            tokens += [seq.next_token, *draft]
            positions += range(seq.kv_len, seq.kv_len + 1 + len(draft))
            ids += [seq.seq_id] * (1 + len(draft))
        started = time.perf_counter()
        self._engine.decode(tokens, positions, ids, [True] * len(tokens))
        spec.cost.observe(len(tokens), time.perf_counter() - started)
        self._meter.stepped(len(tokens), sum(1 for draft in drafts if draft), self._running.kv_used())
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
                self._counters.tokens_drafted += len(draft)
                self._counters.tokens_accepted += accepted
                seq.acceptance.record(len(draft), accepted)
            del seq.kinds[base:]  # what a verify step computes is not reused (its kernels vary with the drafts)
            for i, token in enumerate(emitted):
                seq.kv_len = base + 1 + i
                seq.kinds.append(KIND_UNSURE)
                seq.next_token = -1
                self._running.on_token(seq, token, start + i)
                if seq.next_token < 0:  # finished
                    break

    def _generating(self) -> list[Seq]:
        """The sequences that wait for their next token (the others are prompts still being prefilled)."""
        return [seq for seq in self._running.active if seq.next_token >= 0]

    def _next_parts(self, budget: int) -> list[tuple[Seq, int, int]]:
        """The next call's prompt chunks: the oldest waiting prompt's next chunk, and the next chunk of each younger
        one that fits in `budget` (and n_batch) and leaves every chunk of the call the kernel it takes alone."""
        parts: list[tuple[Seq, int, int]] = []
        total = 0
        for seq in self._running.active:  # admission order: oldest prompt first
            if seq.next_token >= 0 or seq.n_prefilled >= len(seq.prompt):
                continue
            start = seq.n_prefilled
            end = seq.ends[bisect.bisect_right(seq.ends, start)]
            if parts and (total + end - start > min(budget, self._engine.n_batch) or end - start < 2):
                continue
            trial = sorted([*parts, (seq, start, end)], key=lambda part: part[0].seq_id)
            if parts and not self._alike(trial):
                continue
            parts, total = trial, total + end - start
        return parts

    def _alike(self, parts: list[tuple[Seq, int, int]]) -> bool:
        """Whether every chunk of `parts`, in one call, takes the kernel its prompt's cold run gives it."""
        kinds = call_kinds([(seq.seq_id, start, end) for seq, start, end in parts], self._engine.n_batch)
        for (seq, start, end), got in zip(parts, kinds, strict=True):
            at = bisect.bisect_right(seq.ends, start)
            chunk = end - (seq.ends[at - 1] if at else 0)
            if got != bytes([call_kind(chunk, end)]) * (end - start):
                return False
        return True

    def _prefill(self, parts: list[tuple[Seq, int, int]]) -> int:
        """One call for the prompt chunks `parts` ((sequence, start, end), sequence ids ascending: llama.cpp keeps
        consecutive ones in one micro-batch); samples the first token of each prompt it completes, and sends them at
        once: several prompts prefilled in one step (a burst of requests) each get their first token after their own
        call, not after every prompt's of the step."""
        tokens: list[int] = []
        positions: list[int] = []
        ids: list[int] = []
        logits: list[bool] = []
        for seq, start, end in parts:
            tokens += seq.prompt[start:end]
            positions += range(start, end)
            ids += [seq.seq_id] * (end - start)
            logits += [False] * (end - start - 1) + [end == len(seq.prompt)]
        self._engine.decode(tokens, positions, ids, logits)
        kinds = call_kinds([(seq.seq_id, start, end) for seq, start, end in parts], self._engine.n_batch)
        index = -1
        sampled = False
        for (seq, start, end), got in zip(parts, kinds, strict=True):
            index += end - start
            seq.kinds += got
            seq.n_prefilled = seq.kv_len = end
            if end == len(seq.prompt):
                forks = self._running.fork(seq)  # before the first sample: every choice draws from the prompt's logits
                for choice in (seq, *forks):
                    assert choice.sampler is not None
                    self._running.on_token(choice, self._engine.sample(choice.sampler, index), index)
                sampled = True
        if sampled:
            self._flush()
        return len(tokens)
