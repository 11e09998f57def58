"""The registry of live workers (channels.WORKERS): who is alive without a SCAN of the keyspace.

A worker's heartbeat is one script: it writes the heartbeat key (with its TTL, as before) and scores the worker's id
in the registry with the moment that TTL runs out, both by Redis' own clock, so no host's clock is compared with
another's. Reading the fleet is one script too: drop the ids whose score has passed, then MGET the heartbeats of the
rest. A worker that stops cleanly removes both; one that dies stops being listed when its score passes (its key
expires at the same moment). The heartbeat keys are made in the scripts from their prefix: herd runs on one Redis
(or Sentinel), not on a Redis Cluster.
"""

from __future__ import annotations

from herd import channels
from redis import Redis as SyncRedis
from redis.asyncio import Redis

# KEYS: the heartbeat key, the registry. ARGV: worker id, heartbeat bytes, TTL (ms).
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: the registry. ARGV: the heartbeat key prefix. Returns the live workers' heartbeats (nil for one that stopped
# between its last beat and now).
LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)  -- passed, as the key's own expiry
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
local keys = {}
for i, id in ipairs(ids) do keys[i] = ARGV[1] .. id end
return redis.call('MGET', unpack(keys))
"""


class Registry:
    """The two scripts, registered once on a client (EVALSHA after the first call)."""

    def __init__(self, redis: Redis) -> None:
        self._beat = redis.register_script(BEAT)
        self._live = redis.register_script(LIVE)

    async def beat(self, worker_id: str, heartbeat: bytes, ttl_ms: int) -> None:
        await self._beat(keys=[channels.worker(worker_id), channels.WORKERS], args=[worker_id, heartbeat, ttl_ms])

    async def live(self) -> list[bytes]:
        """The heartbeats of the live workers, raw (one command)."""
        values = await self._live(keys=[channels.WORKERS], args=[channels.worker("")])
        return [v for v in values if v]


def live_sync(client: SyncRedis) -> list[bytes]:
    """The same read for synchronous callers (the chart's worker probe)."""
    values = client.register_script(LIVE)(keys=[channels.WORKERS], args=[channels.worker("")])
    return [v for v in values if v]
