"""Leases in Redis: a key that holds its holder's token for a while. Only the holder renews or releases it (one
script each), so a lease that ran out and was taken by another API process is never touched by the first. Batch
drivers (api/files/records.py) and background responses (api/responses/store.py) use them."""

from __future__ import annotations

import contextlib

from herd.redisconn import REDIS_ERRORS, map_redis_errors
from redis.asyncio import Redis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leases:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def take(self, key: str, token: str, ttl_ms: int, *, only_if_free: bool = True) -> bool:
        """Hold `key` for `ttl_ms`; with `only_if_free`, only when nobody holds it (else: take it over)."""
        with map_redis_errors():
            return bool(await self._redis.set(key, token, nx=only_if_free, px=ttl_ms))

    async def renew(self, key: str, token: str, ttl_ms: int) -> bool:
        """False when the lease is no longer ours (it ran out, and maybe another holder took it)."""
        with map_redis_errors():
            return bool(await self._renew(keys=[key], args=[token, ttl_ms]))

    async def release(self, key: str, token: str) -> None:
        """Best effort: a lease not released runs out by itself."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self._release(keys=[key], args=[token])

    async def held(self, key: str) -> bool:
        with map_redis_errors():
            return bool(await self._redis.exists(key))
