"""On-demand model loading and Ollama's keep_alive: one protocol over Redis, with a class for each side.

    API          LoadClient    asks for a model no worker holds (fails fast while a recent load of it failed);
                               records each request's keep_alive; reads when loaded models will unload
    supervisor   LoadManager   pops the asks, so `herd serve` can start a worker per store model; records a
                               worker that died loading
    worker       IdleWatch     reads the latest keep_alive and the model's queue depth, publishes when it will
                               unload, and calls back once it has been idle past its keep_alive

Its keys are named in herd.channels and used only here: LOAD_REQUESTS (a set of model names), keep_alive:{model},
load_failed:{model} (TTL LOAD_FAILED_TTL_S) and expires:{model} (refreshed while the worker lives). Configured
models are always loaded: asks and keep_alive apply only to store models. On Kubernetes nothing pops the asks:
models are per-model Deployments, scaled on queue depth (helm/).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable

import redis
from herd import channels
from herd.errors import EngineError, InvalidRequest, ServiceError
from herd.redisconn import REDIS_ERRORS, map_redis_errors
from redis.asyncio import Redis

log = logging.getLogger("herd.loading")

FOREVER = math.inf
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | float | int) -> float:
    """Ollama's keep_alive (a Go duration string or seconds) in seconds; 0 unloads after the request, a negative
    value keeps the model loaded forever (math.inf)."""
    if isinstance(value, bool):
        raise InvalidRequest("keep_alive must be a duration such as '5m' or a number of seconds", param="keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)  # "300": Go would refuse a unitless string; seconds is the obvious reading
        except ValueError:
            parts = _PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise InvalidRequest(f"invalid keep_alive {value[:40]!r}", param="keep_alive") from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    if math.isnan(seconds):
        raise InvalidRequest("invalid keep_alive", param="keep_alive")
    return FOREVER if seconds < 0 else seconds


class LoadClient:
    """The API's side. `pinned`: the configured models, which are always loaded and never unloaded."""

    def __init__(self, redis: Redis, pinned: frozenset[str]) -> None:
        self._redis = redis
        self.pinned = pinned

    async def request(self, model: str) -> None:
        """Ask for a worker for a store model; EngineError while a recent load of it failed (asking again would
        start a worker that dies again)."""
        with map_redis_errors():
            failed = await self._redis.get(channels.load_failed(model))
            if failed is None:
                await self._redis.sadd(channels.LOAD_REQUESTS, model)  # type: ignore[misc]
        if failed is not None:
            raise EngineError(f"model '{model}' failed to load ({failed.decode()}); the server log has details")

    async def set_keep_alive(self, model: str, seconds: float) -> None:
        """The latest request's keep_alive decides how long an on-demand model stays loaded after it."""
        if model in self.pinned:
            return
        with map_redis_errors():
            await self._redis.set(channels.keep_alive(model), "-1" if math.isinf(seconds) else repr(seconds))

    async def expirations(self, models: list[str]) -> dict[str, float]:
        """When each loaded model's worker plans to exit (math.inf: never, as for configured models)."""
        found = dict.fromkeys(models, math.inf)
        on_demand = [m for m in models if m not in self.pinned]
        if not on_demand:
            return found
        with map_redis_errors():
            values = await self._redis.mget([channels.expires(m) for m in on_demand])
        for model, value in zip(on_demand, values, strict=True):
            if value is not None and float(value) >= 0:
                found[model] = float(value)
        return found


class LoadManager:
    """The supervisor's side (`herd serve`; synchronous, like the supervisor's loop)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def asked(self, count: int = 16) -> list[str]:
        """Model names the API asked for since the last call (each ask is taken once); [] while Redis is away."""
        try:
            popped = self._redis.spop(channels.LOAD_REQUESTS, count)
        except (redis.RedisError, OSError) as exc:
            log.debug("cannot read load requests: %s", exc)
            return []
        return [raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw) for raw in popped or ()]

    def failed(self, model: str, reason: str) -> None:
        """The API fails the model's requests for LOAD_FAILED_TTL_S rather than ask for it again and again."""
        try:
            self._redis.set(channels.load_failed(model), reason, ex=channels.LOAD_FAILED_TTL_S)
        except (redis.RedisError, OSError) as exc:
            log.warning("cannot record the failed load of %s: %s", model, exc)


class IdleWatch:
    """The side of a worker started on demand: it exits once idle past its model's keep_alive (Ollama's unload)."""

    def __init__(self, redis: Redis, model: str, default_keep_alive: str, expiry_ttl_s: float) -> None:
        self._redis = redis
        self._model = model
        self._default = parse_keep_alive(default_keep_alive)
        self._expiry_ttl_s = max(5, int(expiry_ttl_s))

    async def _state(self) -> tuple[float, int]:
        """The latest request's keep_alive (the default when no request said) and how many jobs wait for the model
        (interactive and batch lines)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(channels.keep_alive(self._model))
            pipe.zcard(channels.queue(self._model))
            pipe.zcard(channels.batch_queue(self._model))
            raw, depth, batch_depth = await pipe.execute()
        return (parse_keep_alive(raw.decode()) if raw else self._default), int(depth) + int(batch_depth)

    async def _publish(self, expires_at: float | None) -> None:
        """When this worker will exit if no request comes (None: never); refreshed while it lives, gone after."""
        value = "-1" if expires_at is None else repr(expires_at)
        await self._redis.set(channels.expires(self._model), value, ex=self._expiry_ttl_s)

    async def run(self, activity: Callable[[], tuple[int, int]], on_idle: Callable[[], None], every_s: float) -> None:
        """Check every `every_s`; `activity()` gives (jobs finished so far, jobs running). Calls `on_idle` once no
        job ran for keep_alive seconds and none waits, then returns."""
        last_active, seen = time.time(), -1
        while True:
            finished, running = activity()
            now = time.time()
            if running or finished != seen:
                last_active, seen = now, finished
            try:
                keep_alive, depth = await self._state()
                deadline = None if math.isinf(keep_alive) else last_active + keep_alive
                await self._publish(deadline)
            except (ServiceError, *REDIS_ERRORS) as exc:
                log.warning("keep-alive check failed: %s", exc)
                deadline, depth = None, 1
            if deadline is not None and now >= deadline and not depth and not running:
                log.info("model %s idle past its keep_alive; unloading (worker exits)", self._model)
                on_idle()
                return
            await asyncio.sleep(every_s)
