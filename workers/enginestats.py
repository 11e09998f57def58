"""The engine's measures for the heartbeat: per-request prefill and decode time, tokens per decode step, prefix-cache
hits, speculative verify steps. Written by the engine thread, read (as an EngineStats snapshot) by the heartbeat."""

from __future__ import annotations

import bisect

from herd.inference import Buckets, EngineStats

PHASE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STEP_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> Buckets:
        return Buckets(self.bounds, tuple(self.counts), self.sum, self.count)


class EngineMeter:
    """Only the engine thread writes; a snapshot read meanwhile may be one step behind, never torn per field."""

    def __init__(self, kv_total: int) -> None:
        self.prefill = _Histogram(PHASE_BUCKETS_S)
        self.decode = _Histogram(PHASE_BUCKETS_S)
        self.step_tokens = _Histogram(STEP_TOKEN_BUCKETS)
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.verify_steps = 0
        self.kv_used = 0
        self.kv_total = kv_total

    def admitted(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached_tokens

    def finished(self, prefill_ns: int, decode_ns: int) -> None:
        self.prefill.observe(prefill_ns / 1e9)
        self.decode.observe(decode_ns / 1e9)

    def stepped(self, tokens: int, verified_drafts: int, kv_used: int) -> None:
        self.step_tokens.observe(tokens)
        self.verify_steps += verified_drafts
        self.kv_used = kv_used

    def snapshot(self) -> EngineStats:
        return EngineStats(
            prefill_s=self.prefill.snapshot(),
            decode_s=self.decode.snapshot(),
            step_tokens=self.step_tokens.snapshot(),
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            verify_steps=self.verify_steps,
            kv_used=self.kv_used,
            kv_total=self.kv_total,
        )
