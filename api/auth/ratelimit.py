"""Requests and tokens per minute per principal: token buckets kept in Redis (one Lua script, Redis's clock), so the
limits hold across API replicas; OpenAI's x-ratelimit-* headers and its 429.

Tokens are charged as an estimate when a generation is admitted (prompt characters / 4 + max_tokens) and settled
with the real usage when it ends. Counting only after the fact would let a burst of concurrent requests all pass
admission before any of them is counted; the estimate makes the limit hold under concurrency, and settling means a
generous max_tokens costs only what was generated. A request is admitted while the bucket is positive, so a single
request larger than the whole budget is still possible (it leaves the bucket in debt).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable

import msgspec
from herd import channels
from herd.api.telemetry.metrics import Metrics
from herd.errors import RateLimited
from herd.inference import EmbeddingRequest, GenerationRequest
from herd.redisconn import map_redis_errors
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

# KEYS: bucket hashes. ARGV: per key (capacity, need, cost). Refills continuously to capacity over a minute.
# All-or-nothing: when any bucket holds less than its `need`, nothing is taken. Returns ok, then each level.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local ok = 1
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[3 * i - 2])
  local state = redis.call('HMGET', key, 'l', 't')
  local level = tonumber(state[1]) or cap
  local at = tonumber(state[2]) or now
  level = math.min(cap, level + (now - at) * cap / 60000)
  levels[i] = level
  if level < tonumber(ARGV[3 * i - 1]) then ok = 0 end
end
local out = {ok}
for i, key in ipairs(KEYS) do
  local level = levels[i]
  if ok == 1 then
    level = math.min(tonumber(ARGV[3 * i - 2]), level - tonumber(ARGV[3 * i]))
    redis.call('HSET', key, 'l', tostring(level), 't', now)
    redis.call('PEXPIRE', key, 120000)
  end
  out[i + 1] = tostring(level)
end
return out
"""

REQUESTS, TOKENS = "requests", "tokens"
DEFAULT_COMPLETION_ESTIMATE = 256  # charged for a request without max_tokens, until its real usage is known
_ALWAYS = -1e18  # a `need` every bucket meets: settling never fails


class Bucket(msgspec.Struct, frozen=True):
    kind: str  # REQUESTS or TOKENS
    limit: int  # per minute
    level: float  # what is left now (negative: in debt)

    def reset_s(self) -> float:
        """Until the bucket is full again."""
        return max(0.0, (self.limit - self.level) * 60.0 / self.limit)

    def wait_s(self, need: float = 1.0) -> float:
        """Until the bucket holds `need`."""
        return max(0.0, (need - self.level) * 60.0 / self.limit)


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 20ms."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


def headers(buckets: dict[str, Bucket]) -> dict[str, str]:
    out = {}
    for kind, bucket in buckets.items():
        out[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
        out[f"x-ratelimit-reset-{kind}"] = duration(bucket.reset_s())
    return out


def estimate(request: GenerationRequest | EmbeddingRequest) -> int:
    if isinstance(request, EmbeddingRequest):
        return sum(len(i) // 4 + 1 if isinstance(i, str) else len(i) for i in request.inputs)
    text = request.prompt or "".join(m.content for m in request.messages or ())
    prompt = len(text) // 4 + len(request.context_tokens) + 1
    return prompt + (request.max_tokens or DEFAULT_COMPLETION_ESTIMATE)


class Quotas:
    """The buckets in Redis: the one place the script runs. `redis` is resolved at first use (the client is made
    when the app starts, after this is built)."""

    def __init__(self, redis: Callable[[], Redis], metrics: Metrics | None = None) -> None:
        self._redis = redis
        self._script: AsyncScript | None = None
        self.metrics = metrics

    async def take(self, buckets: list[tuple[str, int, float, int]]) -> tuple[bool, list[float]]:
        """Run the script over (key, capacity, need, cost) buckets: all taken, or none; their levels."""
        if self._script is None:
            self._script = self._redis().register_script(SCRIPT)  # EVALSHA: the script is sent once
        args = [str(v) for _, cap, need, cost in buckets for v in (cap, need, cost)]
        with map_redis_errors():
            ok, *levels = await self._script(keys=[b[0] for b in buckets], args=args)
        return bool(ok), [float(level) for level in levels]


class Meter:
    """One request's account: the buckets last seen (for the headers), tokens reserved and tokens used."""

    def __init__(self, subject: str, rpm: int, tpm: int, quotas: Quotas) -> None:
        self._quotas = quotas
        self.subject = subject
        self.rpm = rpm
        self.tpm = tpm
        self.buckets: dict[str, Bucket] = {}
        self.reserved = 0
        self.used = 0
        self.closed = False  # settled: a task outliving the request (it inherited this context) is not charged

    def _specs(self, requests: int, tokens: int, need: float) -> list[tuple[str, str, int, float, int]]:
        specs = []
        if self.rpm and requests:
            specs.append((REQUESTS, channels.rate_limit(self.subject, REQUESTS), self.rpm, 1.0, requests))
        if self.tpm:
            specs.append((TOKENS, channels.rate_limit(self.subject, TOKENS), self.tpm, need, tokens))
        return specs

    async def _take(self, specs: list[tuple[str, str, int, float, int]]) -> bool:
        ok, levels = await self._quotas.take([(key, cap, need, cost) for _, key, cap, need, cost in specs])
        for (kind, _, cap, _, _), level in zip(specs, levels, strict=True):
            self.buckets[kind] = Bucket(kind, cap, level)
        return ok

    async def admit(self) -> None:
        """One request; refused while either bucket is empty."""
        if not await self._take(self._specs(1, 0, 1.0)):
            self._refuse()

    async def reserve(self, request: GenerationRequest | EmbeddingRequest) -> None:
        """The request's estimated tokens, taken when it is admitted (refused while the budget is spent)."""
        if not self.tpm or self.closed:
            return
        tokens = estimate(request)
        if not await self._take(self._specs(0, tokens, 1.0)):
            self._refuse()
        self.reserved += tokens

    async def settle(self) -> None:
        """Give back what was reserved and not used (or charge what was used beyond it)."""
        self.closed = True
        if self.tpm and self.reserved != self.used:
            await self._take(self._specs(0, self.used - self.reserved, _ALWAYS))
            self.reserved = self.used

    def _refuse(self) -> None:
        empty = [b for b in self.buckets.values() if b.level < 1]
        kind = empty[0].kind if empty else REQUESTS
        if self._quotas.metrics is not None:
            self._quotas.metrics.observe_rate_limited(kind)
        wait = max((b.wait_s() for b in empty), default=1.0)
        limit = self.rpm if kind == REQUESTS else self.tpm
        raise RateLimited(
            f"Rate limit reached for {kind} per minute (limit {limit}); retry in {duration(wait)}",
            retry_after_s=max(1, math.ceil(wait)),
        )


# The meter of the request being handled: set by the auth middleware, read where tokens become known (the
# gateway at admission, the event stream at the end). A ContextVar, not module state: each request has its own.
METER: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("herd_meter", default=None)
