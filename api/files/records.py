"""Redis records of files and batches: metadata, owners, listing, idempotent creates, batch leases.

Kept apart from api/gateway.py, which carries request traffic (subscribe, enqueue, events): these are durable
records with their own concurrency rules (WATCH/MULTI updates, Lua for create-once and for leases)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import redis.exceptions
from herd import channels
from herd.api.leases import Leases
from herd.api.wire.batch import Batch, FileObject
from herd.errors import NotFound
from herd.redisconn import map_redis_errors
from redis.asyncio import Redis

_IDEMPOTENCY_TTL_S = 24 * 3600

# KEYS: idempotency key (or "" for none), batch key, owner's batch list, active set.
# ARGV: batch id, record, created ms, ttl s.  Returns the id of the batch that key names (a new one or the first).
_CREATE_ONCE = """
if KEYS[1] ~= '' then
  local first = redis.call('GET', KEYS[1])
  if first then return first end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return ARGV[1]
"""


class StoredFile(msgspec.Struct):
    owner: str
    file: FileObject


class StoredBatch(msgspec.Struct):
    owner: str
    batch: Batch


class Records:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._create_once = redis.register_script(_CREATE_ONCE)
        self._leases = Leases(redis)

    # ---- files -------------------------------------------------------------------------------------------

    async def put_file(self, owner: str, file: FileObject) -> None:
        async with map_redis_errors(), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(channels.file(file.id), msgspec.json.encode(StoredFile(owner, file)))
            pipe.zadd(channels.files_of(owner), {file.id: file.created_at * 1000})
            await pipe.execute()

    async def file(self, owner: str, file_id: str) -> FileObject:
        """The caller's file; NotFound for a missing file and for someone else's alike."""
        with map_redis_errors():
            raw = await self._redis.get(channels.file(file_id))
        stored = msgspec.json.decode(raw, type=StoredFile) if raw else None
        if stored is None or stored.owner != owner:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return stored.file

    async def delete_file(self, owner: str, file_id: str) -> None:
        await self.file(owner, file_id)
        async with map_redis_errors(), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(channels.file(file_id))
            pipe.zrem(channels.files_of(owner), file_id)
            await pipe.execute()

    async def files(
        self, owner: str, purpose: str | None, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[FileObject], bool]:
        ids = await self._page_ids(channels.files_of(owner), after, ascending)
        found: list[FileObject] = []
        for start in range(0, len(ids), 100):
            with map_redis_errors():
                raws = await self._redis.mget([channels.file(i) for i in ids[start : start + 100]])
            for raw in raws:
                stored = msgspec.json.decode(raw, type=StoredFile) if raw else None
                if stored is not None and (purpose is None or stored.file.purpose == purpose):
                    found.append(stored.file)
                    if len(found) > limit:
                        return found[:limit], True
        return found, False

    async def _page_ids(self, key: str, after: str | None, ascending: bool) -> list[str]:
        with map_redis_errors():
            raw = await (self._redis.zrange(key, 0, -1) if ascending else self._redis.zrevrange(key, 0, -1))
        ids = [i.decode() for i in raw]
        if after is not None and after in ids:
            return ids[ids.index(after) + 1 :]
        return ids

    # ---- batches -----------------------------------------------------------------------------------------

    async def create_batch(self, owner: str, batch: Batch, idempotency_key: str | None) -> Batch:
        """Store a new batch, or, when this owner already used `idempotency_key`, return the batch it created."""
        keys = [
            channels.batch_idempotency(owner, idempotency_key) if idempotency_key else "",
            channels.batch(batch.id),
            channels.batches_of(owner),
            channels.BATCHES_ACTIVE,
        ]
        record = msgspec.json.encode(StoredBatch(owner, batch))
        with map_redis_errors():
            chosen = await self._create_once(keys, [batch.id, record, batch.created_at * 1000, _IDEMPOTENCY_TTL_S])
        chosen_id = chosen.decode() if isinstance(chosen, bytes) else str(chosen)
        return batch if chosen_id == batch.id else await self.batch(owner, chosen_id)

    async def load_batch(self, batch_id: str) -> StoredBatch | None:
        with map_redis_errors():
            raw = await self._redis.get(channels.batch(batch_id))
        return msgspec.json.decode(raw, type=StoredBatch) if raw else None

    async def batch(self, owner: str, batch_id: str) -> Batch:
        stored = await self.load_batch(batch_id)
        if stored is None or stored.owner != owner:
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        return stored.batch

    async def batches(self, owner: str, limit: int, after: str | None) -> tuple[list[Batch], bool]:
        ids = (await self._page_ids(channels.batches_of(owner), after, ascending=False))[: limit + 1]
        if not ids:
            return [], False
        with map_redis_errors():
            raws = await self._redis.mget([channels.batch(i) for i in ids])
        found = [msgspec.json.decode(raw, type=StoredBatch).batch for raw in raws if raw]
        return found[:limit], len(ids) > limit

    async def update_batch(self, batch_id: str, change: Callable[[Batch], Batch | None]) -> Batch:
        """Read-modify-write under WATCH: the route's cancel and the driver's progress never overwrite each other.
        `change` returns the new object, or None to leave it as it is."""
        key = channels.batch(batch_id)
        async with map_redis_errors(), self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
                    stored = msgspec.json.decode(raw, type=StoredBatch)
                    changed = change(stored.batch)
                    if changed is None:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return stored.batch
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, msgspec.json.encode(StoredBatch(stored.owner, changed)))
                    await pipe.execute()
                    return changed
                except redis.exceptions.WatchError:
                    continue

    async def active_batches(self) -> list[str]:
        with map_redis_errors():
            members: set[bytes] = await self._redis.smembers(channels.BATCHES_ACTIVE)  # type: ignore[misc]
        return sorted(i.decode() for i in members)

    async def retire_batch(self, batch_id: str) -> None:
        """The batch reached a final state: nobody needs to drive it any more."""
        async with map_redis_errors(), self._redis.pipeline(transaction=True) as pipe:
            pipe.srem(channels.BATCHES_ACTIVE, batch_id)
            pipe.delete(channels.batch_inflight(batch_id))
            await pipe.execute()

    # ---- who drives a batch ------------------------------------------------------------------------------

    async def acquire(self, batch_id: str, token: str, ttl_ms: int) -> bool:
        return await self._leases.take(channels.batch_lease(batch_id), token, ttl_ms)

    async def renew(self, batch_id: str, token: str, ttl_ms: int) -> bool:
        return await self._leases.renew(channels.batch_lease(batch_id), token, ttl_ms)

    async def release(self, batch_id: str, token: str) -> None:
        await self._leases.release(channels.batch_lease(batch_id), token)

    async def set_inflight(self, batch_id: str, line: int, request_id: str | None) -> None:
        with map_redis_errors():
            if request_id is None:
                await self._redis.hdel(channels.batch_inflight(batch_id), str(line))  # type: ignore[misc]
            else:
                await self._redis.hset(channels.batch_inflight(batch_id), str(line), request_id)  # type: ignore[misc]

    async def take_inflight(self, batch_id: str) -> list[str]:
        """Request ids an earlier driver left running (it died): the new driver cancels and re-runs them."""
        async with map_redis_errors(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hvals(channels.batch_inflight(batch_id))
            pipe.delete(channels.batch_inflight(batch_id))
            values, _ = await pipe.execute()
        return [v.decode() for v in values]
