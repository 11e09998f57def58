"""Speculative decoding: per sequence a proposer drafts up to k tokens, the batcher verifies every sequence's draft in
its one decode step, keeps the tokens the model's own sampler confirms, and trims the rejected KV cells.

Verification draws the token at each drafted position from the sequence's own sampler (its chain, penalties,
grammar and seed, exactly as a one-token step would) and keeps the drafted token while the draw equals it; the
first draw that differs is emitted in its place and ends the step. Both proposers here are deterministic (prompt
lookup, and a draft model decoding greedily), so a draft is a point mass q on its token x, and this is the standard
speculative-sampling rule: x is accepted with probability min(1, p(x)/q(x)) = p(x), and on rejection the token comes
from max(0, p - q) renormalised, which is p without x, which is what a draw from p that is not x gives. So every
sampler keeps the target's distribution; greedy output is the model's argmax, and with the same seed a sampled
request draws the same tokens with or without speculation (one draw per emitted token, from the same logits).

How much to draft is planned per step, not guessed: each sequence keeps its recent per-token acceptance rate a, a
draft of k tokens is expected to yield (1 - a^(k+1)) / (1 - a) tokens, and the planner gives out draft tokens,
likeliest first, while they raise the step's expected tokens per second, using what a decode of n tokens costs
(measured when the worker starts, then updated from every step: on a GPU extra tokens are nearly free, on a small
CPU they are not) and, for a draft model, what its decodes cost.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from herd.config import ModelConfig
from herd.errors import EngineError
from herd.workers.engine import Engine
from herd.workers.protocol import Sampler

# The longest match up to MAX_NGRAM tokens wins (a long match finds the place in the text being copied); shorter
# matches than MIN_NGRAM draft mostly noise, and each rejected token still costs a decode slot. Replayed on the
# grounded prompts of bench/rows.py (the model's own greedy output), 3..8 accepted 87 % of 4-token drafts where
# 2..3 accepted 78 %.
MAX_NGRAM = 8
MIN_NGRAM = 3
# What a sequence is assumed to accept before it has drafted: optimistic, so that it drafts and finds out (a few
# rejections outweigh it; evidence fades while it does not draft, so it tries again now and then).
PRIOR_HITS, PRIOR_MISSES = 2.0, 0.25
DECAY = 0.7  # weight of the older evidence after each verified draft (the text changes: a list, then prose)
IDLE_DECAY = 0.97  # per step without a draft, the evidence fades back toward the prior (so drafting is retried)
COST_WEIGHT = 0.2  # weight of a new timing in a decode cost's running average
CATCH_UP = 64  # a draft model's cost per token when it catches up is taken from a decode of this many
CALIBRATION_ROUNDS = 4


def prompt_lookup(context: list[int], k: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the context's last n tokens (longest n first)."""
    end = len(context)
    for n in range(min(MAX_NGRAM, end - 1), MIN_NGRAM - 1, -1):
        pattern = context[end - n :]
        first = pattern[0]
        for start in range(end - n - 1, -1, -1):
            if context[start] == first and context[start : start + n] == pattern:
                follow = context[start + n : start + n + k]
                if follow:
                    return follow
    return []


@dataclass(slots=True)
class NgramIndex:
    """Prompt lookup for one growing context without a scan per step: where each n-gram last started, indexed as
    the context grows (a few dict writes per new token), so a lookup answers as prompt_lookup would."""

    starts: dict[tuple[int, ...], int] = field(default_factory=dict)
    indexed: int = 0  # the n-grams ending before this position are in `starts`

    def draft(self, context: list[int], k: int) -> list[int]:
        end = len(context)
        # The n-gram ending at the last token is the pattern itself: only those ending before it may match.
        for last in range(self.indexed, end - 1):
            for n in range(MIN_NGRAM, MAX_NGRAM + 1):
                if last + 1 >= n:
                    self.starts[tuple(context[last + 1 - n : last + 1])] = last + 1 - n
        self.indexed = max(self.indexed, end - 1)
        for n in range(min(MAX_NGRAM, end - 1), MIN_NGRAM - 1, -1):
            start = self.starts.get(tuple(context[end - n :]))
            if start is not None:
                return context[start + n : start + n + k]
        return []


@dataclass(slots=True)
class Acceptance:
    """One sequence's recent per-token acceptance: each drafted token kept is a hit, a rejection ends a draft."""

    hits: float = 0.0
    misses: float = 0.0

    @property
    def rate(self) -> float:
        return (self.hits + PRIOR_HITS) / (self.hits + self.misses + PRIOR_HITS + PRIOR_MISSES)

    def record(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            self.hits *= IDLE_DECAY
            self.misses *= IDLE_DECAY
            return
        self.hits = self.hits * DECAY + accepted
        self.misses = self.misses * DECAY + (accepted < drafted)


class DecodeCost:
    """Seconds one llama_decode of n tokens takes, for n = 1..n_max: timed at start, then a running average."""

    def __init__(self, engine: Engine, seq_id: int, n_max: int) -> None:
        self._seconds = [0.0] * (n_max + 1)
        points = sorted({n for n in (1, 2, 3, 4, 6, 8, 16, 32) if n < n_max} | {n_max})
        self._time(engine, seq_id, points[-1])  # the first decodes pay for allocations: not part of the cost
        # Rounds over all the sizes, keeping each size's fastest: other work on the machine (another model loading,
        # say) only ever adds time, and a round it disturbs does not skew one size against the others. A skewed
        # table would stick: sizes the planner then never uses are never timed again.
        best = dict.fromkeys(points, float("inf"))
        for _ in range(CALIBRATION_ROUNDS):
            for n in points:
                best[n] = min(best[n], self._time(engine, seq_id, n))
        timed, floor = [(0, 0.0)], 0.0
        for n in points:
            floor = max(floor, best[n])  # more tokens never cost less
            timed.append((n, floor))
        for (n0, t0), (n1, t1) in itertools.pairwise(timed):
            for n in range(n0 + 1, n1 + 1):  # linear between the timed points
                self._seconds[n] = t0 + (t1 - t0) * (n - n0) / (n1 - n0)

    @staticmethod
    def _time(engine: Engine, seq_id: int, n: int) -> float:
        start = time.perf_counter()
        engine.decode([max(engine.bos_id, 0)] * n, range(n), [seq_id] * n, [True] * n)
        elapsed = time.perf_counter() - start
        engine.drop(seq_id)
        return elapsed

    def __call__(self, n: int) -> float:
        if n <= 0:
            return 0.0
        last = len(self._seconds) - 1
        return self._seconds[n] if n <= last else self._seconds[last] * n / last

    def observe(self, n: int, seconds: float) -> None:
        if 0 < n < len(self._seconds):
            self._seconds[n] += COST_WEIGHT * (seconds - self._seconds[n])


def plan(
    rates: list[float],
    limits: list[int],
    cost: Callable[[int], float],
    draft_cost: Callable[[int], float] | None,
    max_tokens: int,
    entry: list[float] | None = None,
    at_least: int = 0,
) -> list[int]:
    """Draft lengths for one step (sequence i drafts at most limits[i], the verify decode holds at most max_tokens)
    that maximise expected tokens per second; entry[i] is a cost sequence i pays once if it drafts at all (the draft
    model catching up on the tokens it has not seen); every sequence that may draft drafts at least `at_least`.

    Sequence i with acceptance rate a drafting its j-th token adds a^j expected tokens; draft tokens are handed out
    likeliest first, and the step keeps the prefix of that order with the best expected tokens / (cost of
    verifying n tokens + cost of the draft model's decodes, one per drafted position over the drafting sequences).
    """
    n = len(rates)
    ks = [0] * n
    per_level: list[int] = []  # draft-model decodes: how many sequences draft at each position
    tokens, gain, drafting = n, float(n), 0.0

    def add(i: int) -> None:
        nonlocal tokens, gain, drafting
        ks[i] += 1
        tokens += 1
        gain += rates[i] ** ks[i]
        if draft_cost is not None:
            level = ks[i] - 1
            if level == len(per_level):
                per_level.append(0)
            drafting += draft_cost(per_level[level] + 1) - draft_cost(per_level[level])
            per_level[level] += 1
        if entry is not None and ks[i] == 1:
            drafting += entry[i]

    eligible = [i for i in range(n) if limits[i] > 0 and rates[i] > 0.0]
    for i in eligible:
        for _ in range(min(at_least, limits[i])):
            if tokens < max_tokens:
                add(i)
    heap = [(-(rates[i] ** (ks[i] + 1)), i) for i in eligible if ks[i] < limits[i]]
    heapq.heapify(heap)
    best_rate, best = gain / (cost(tokens) + drafting), list(ks)
    while heap and tokens < max_tokens:
        _, i = heapq.heappop(heap)
        add(i)
        rate = gain / (cost(tokens) + drafting)
        if rate > best_rate:
            best_rate, best = rate, list(ks)
        if ks[i] < limits[i]:
            heapq.heappush(heap, (-(rates[i] ** (ks[i] + 1)), i))
    return best


class Speculator:
    """Plans and proposes each step's drafts for a model (prompt lookup, or a draft model in its own context with
    the same sequence ids). Made before the batcher starts: it times decodes on sequence 0 while nothing runs."""

    def __init__(self, model: ModelConfig, target: Engine, n_threads: int) -> None:
        self.k_max = max(1, model.spec_k)
        self.k_min = min(max(0, model.spec_min), self.k_max)
        self.max_tokens = min(target.n_batch, target.max_seqs * (1 + self.k_max))  # tokens in one verify decode
        self._draft: Engine | None = None
        self._held: dict[int, int] = {}  # seq id -> tokens of that sequence whose KV cells the draft model holds
        self._lookup: dict[int, NgramIndex] = {}  # seq id -> its context's n-grams (prompt lookup)
        self._draft_cost: DecodeCost | None = None
        if model.speculate == "draft":
            cfg = msgspec.structs.replace(
                model, name=f"{model.name} (draft)", path=model.draft_path, n_ctx=target.n_ctx_seq
            )
            self._draft = Engine(cfg, target.max_seqs, target.n_batch, n_threads)
            if self._draft.n_vocab != target.n_vocab:
                self._draft.close()
                raise EngineError(f"the draft model of '{model.name}' has another vocabulary than the model")
            self._draft_cost = DecodeCost(self._draft, 0, max(target.max_seqs, CATCH_UP))
        self.cost = DecodeCost(target, 0, self.max_tokens)
        self._greedy = Sampler(None)

    def reset(self, seq_id: int) -> None:
        """A sequence starts in this slot: what the speculator holds there belongs to an earlier one."""
        self._lookup[seq_id] = NgramIndex()
        if self._draft is not None:
            self._draft.drop(seq_id)
            self._held[seq_id] = 0

    def drafts(self, items: list[tuple[int, list[int], int, float]]) -> list[list[int]]:
        """This step's drafts for (seq id, prompt + output so far, most tokens it may draft, acceptance rate), one
        item per sequence in the verify decode; the context's last token is the one not yet decoded."""
        rates = [rate for _, _, _, rate in items]
        if self._draft is None or self._draft_cost is None:
            found = [
                self._lookup.setdefault(seq_id, NgramIndex()).draft(context, min(limit, self.k_max))
                for seq_id, context, limit, _ in items
            ]
            lengths = plan(rates, [len(d) for d in found], self.cost, None, self.max_tokens, at_least=self.k_min)
            return [d[:k] for d, k in zip(found, lengths, strict=True)]
        limits = [min(limit, self.k_max) for _, _, limit, _ in items]
        per_token = self._draft_cost(CATCH_UP) / CATCH_UP  # catching up decodes many tokens at once
        behind = [len(context) - 1 - self._held.get(seq_id, 0) for seq_id, context, _, _ in items]
        entry = [n * per_token for n in behind]
        lengths = plan(rates, limits, self.cost, self._draft_cost, self.max_tokens, entry, self.k_min)
        asked = [(i, k) for i, k in enumerate(lengths) if k > 0]
        proposed = self._propose([(items[i][0], items[i][1], k) for i, k in asked])
        drafts = [list[int]() for _ in items]
        for (i, _), draft in zip(asked, proposed, strict=True):
            drafts[i] = draft
        return drafts

    def _propose(self, items: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """The draft model's greedy continuation of k tokens for each (seq id, context, k)."""
        assert self._draft is not None and self._draft_cost is not None
        draft, drafts = self._draft, [list[int]() for _ in items]
        # Catch up: everything the draft model has not seen, all but the last token in chunks of their own.
        for seq_id, context, _ in items:
            held = self._held.get(seq_id, 0)
            while held < len(context) - 1:
                end = min(len(context) - 1, held + draft.n_batch)
                n = end - held
                draft.decode(context[held:end], range(held, end), [seq_id] * n, [False] * n)
                held = end
            self._held[seq_id] = held
        # Then one decode per drafted position, every drafting sequence together.
        feed = [(i, context[-1], len(context) - 1) for i, (_, context, _) in enumerate(items)]
        for step in range(max((k for _, _, k in items), default=0)):
            feed = [(i, tok, pos) for i, tok, pos in feed if items[i][2] > step]
            if not feed:
                break
            start = time.perf_counter()
            draft.decode(
                [t for _, t, _ in feed], [p for _, _, p in feed], [items[i][0] for i, _, _ in feed], [True] * len(feed)
            )
            self._draft_cost.observe(len(feed), time.perf_counter() - start)
            for index, (i, _, pos) in enumerate(feed):
                token = draft.sample(self._greedy, index)
                drafts[i].append(token)
                self._held[items[i][0]] = pos + 1
                feed[index] = (i, token, pos + 1)
        return drafts

    def verified(self, seq_id: int, context_len: int, accepted: int) -> None:
        """The model accepted `accepted` drafted tokens after a context of `context_len`: forget the draft's rest."""
        if self._draft is not None:
            keep = min(self._held.get(seq_id, 0), context_len + accepted)
            self._draft.trim(seq_id, keep)
            self._held[seq_id] = keep

    def close(self) -> None:
        if self._draft is not None:
            self._draft.close()
