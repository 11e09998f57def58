"""Which API process drives which batch: each one scans the active batches and drives those whose lease it wins.

A lease is a Redis key with a TTL that its holder renews; a process that dies (or restarts) stops renewing, and
another replica (or the restarted process) takes the batch over once the lease expires. On a clean shutdown the
leases are released at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from herd.api.batches.driver import BatchDriver
from herd.api.files.filestore import FileStore
from herd.api.files.records import Records
from herd.api.gateway import Gateway
from herd.api.grammar.schema import GrammarCache
from herd.config import Settings
from herd.errors import ServiceError

log = logging.getLogger("herd.api.batch")


class BatchRunner:
    def __init__(
        self, gateway: Gateway, grammars: GrammarCache, records: Records, store: FileStore, settings: Settings
    ) -> None:
        self._gateway = gateway
        self._grammars = grammars
        self._records = records
        self._store = store
        self._settings = settings
        self._token = secrets.token_hex(8)
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="herd-batch-runner")

    def wake(self) -> None:
        """A batch was just created: look for work now rather than at the next tick."""
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        drivers = list(self._drivers.items())
        for _, task in drivers:
            task.cancel()
        await asyncio.gather(*(task for _, task in drivers), return_exceptions=True)
        for batch_id, _ in drivers:
            await self._records.release(batch_id, self._token)  # another replica may take over now

    async def _loop(self) -> None:
        # Renew well within the lease so that a slow tick does not lose it.
        tick = min(1.0, self._settings.batch_lease_ms / 4000)
        while True:
            try:
                await self._renew()
                for batch_id in await self._records.active_batches():
                    if batch_id not in self._drivers and await self._records.acquire(
                        batch_id, self._token, self._settings.batch_lease_ms
                    ):
                        self._spawn(batch_id)
            except ServiceError as exc:
                log.warning("batch runner: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()

    async def _renew(self) -> None:
        for batch_id, task in list(self._drivers.items()):
            if not await self._records.renew(batch_id, self._token, self._settings.batch_lease_ms):
                log.warning("lost the lease of batch %s; stopping its driver", batch_id)
                task.cancel()

    def _spawn(self, batch_id: str) -> None:
        self._drivers[batch_id] = asyncio.create_task(self._drive(batch_id), name=f"herd-batch-{batch_id}")

    async def _drive(self, batch_id: str) -> None:
        driver = BatchDriver(batch_id, self._gateway, self._grammars, self._records, self._store, self._settings)
        try:
            await driver.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease is left to expire: the batch is tried again after batch_lease_ms, not in a tight loop.
            log.exception("the driver of batch %s stopped", batch_id)
        else:
            await self._records.release(batch_id, self._token)
        finally:
            self._drivers.pop(batch_id, None)
