"""Drives one batch from validating to its final state. Whoever holds the batch's lease runs this; it can stop at
any point (process killed, lease lost) and a later run picks up where the result logs say the work stands.

Exactly once per custom_id: only the driver writes results, and it appends a line's result (fsynced) only after
the line finished; a new driver reads both logs back and runs only the lines in neither. Lines an earlier driver
left running are cancelled and run again: their first results were never written."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from herd.api.batches.lines import run_line
from herd.api.batches.validate import Line, parse_input
from herd.api.errors import TABLE, openai_body
from herd.api.files.filestore import FileStore, ResultLog
from herd.api.files.records import Records
from herd.api.gateway import Gateway
from herd.api.grammar.schema import GrammarCache
from herd.api.wire.batch import (
    Batch,
    BatchError,
    BatchErrors,
    BatchLineError,
    BatchOutputLine,
    BatchRequestCounts,
    BatchResponse,
    FileObject,
)
from herd.config import Settings
from herd.errors import EngineError, Overloaded, ServiceError, StreamBroken, Unavailable, WorkerLost

log = logging.getLogger("herd.api.batch")

FINAL = frozenset({"failed", "completed", "expired", "cancelled"})
# A line whose worker died this many times is given up (it may be what kills the worker); waiting for capacity
# (no worker up, a full queue) is retried until the batch's window closes.
MAX_CRASHES = 5
Outcome = Literal["completed", "cancelled", "expired"]


def _now() -> int:
    return int(time.time())


def _replace(**changes: object) -> Callable[[Batch], Batch]:
    return lambda b: msgspec.structs.replace(b, **changes)


async def _first(*futures: asyncio.Future[Any]) -> None:
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)


def result_file_ids(batch_id: str) -> tuple[str, str]:
    """Output and error file ids follow from the batch id, so a repeated finalize names the same files."""
    suffix = batch_id.removeprefix("batch_")
    return f"file-{suffix}-output", f"file-{suffix}-errors"


class BatchDriver:
    def __init__(
        self,
        batch_id: str,
        gateway: Gateway,
        grammars: GrammarCache,
        records: Records,
        store: FileStore,
        settings: Settings,
    ) -> None:
        self.batch_id = batch_id
        self._gateway = gateway
        self._grammars = grammars
        self._records = records
        self._store = store
        self._settings = settings
        self._counts = BatchRequestCounts()
        self._results: asyncio.Queue[tuple[bool, bytes]] = asyncio.Queue()

    async def run(self) -> None:
        stored = await self._records.load_batch(self.batch_id)
        if stored is None or stored.batch.status in FINAL:
            await self._records.retire_batch(self.batch_id)
            return
        owner, batch = stored.owner, stored.batch
        for request_id in await self._records.take_inflight(self.batch_id):
            await self._gateway.cancel(request_id)  # an earlier driver's line: its result would go nowhere
        out_log, err_log = self._store.results(self.batch_id)
        done = set(await asyncio.to_thread(out_log.recover))
        failed = set(await asyncio.to_thread(err_log.recover))
        self._counts = BatchRequestCounts(total=batch.request_counts.total, completed=len(done), failed=len(failed))
        if batch.status == "finalizing":
            return await self._finalize(owner, out_log, err_log, "completed")
        if batch.status == "cancelling" and batch.in_progress_at is None:
            return await self._finalize(owner, out_log, err_log, "cancelled")
        lines = await self._validate(batch)
        if lines is None:
            return
        batch = await self._records.update_batch(self.batch_id, _replace(request_counts=self._counts))
        todo = [line for line in lines if line.custom_id not in done and line.custom_id not in failed]
        if batch.status == "cancelling":
            outcome: Outcome = "cancelled"
        else:
            outcome = await self._run_lines(batch, todo, out_log, err_log)
        await self._finalize(owner, out_log, err_log, outcome)

    async def _validate(self, batch: Batch) -> list[Line] | None:
        """The lines to run; None when the batch failed validation (then it is already final) or was cancelled."""
        if not await asyncio.to_thread(self._store.exists, batch.input_file_id):
            await self._fail(batch, "input_file_missing", "The input file was deleted before the batch ran.")
            return None
        data = await asyncio.to_thread(self._store.read, batch.input_file_id)
        models = await self._gateway.models()
        lines, errors, model = parse_input(data, batch.endpoint, models, self._settings.batch_max_lines)
        if batch.status != "validating":
            self._counts.total = len(lines)
            return lines
        if errors:
            await self._records.update_batch(
                self.batch_id,
                _replace(status="failed", failed_at=_now(), errors=BatchErrors(data=errors)),
            )
            await self._records.retire_batch(self.batch_id)
            log.info("batch %s failed validation: %d errors", self.batch_id, len(errors))
            return None
        self._counts.total = len(lines)

        def start(b: Batch) -> Batch:
            if b.status == "cancelling":
                return msgspec.structs.replace(b, request_counts=self._counts, model=model)
            return msgspec.structs.replace(
                b, status="in_progress", in_progress_at=_now(), request_counts=self._counts, model=model
            )

        await self._records.update_batch(self.batch_id, start)
        return lines

    async def _fail(self, batch: Batch, code: str, message: str) -> None:
        error = BatchErrors(data=[BatchError(code=code, message=message)])
        await self._records.update_batch(self.batch_id, _replace(status="failed", failed_at=_now(), errors=error))
        await self._records.retire_batch(self.batch_id)

    # ---- running ---------------------------------------------------------------------------------------------

    async def _run_lines(self, batch: Batch, todo: list[Line], out_log: ResultLog, err_log: ResultLog) -> Outcome:
        writer = asyncio.create_task(self._writer(out_log, err_log))
        running: set[asyncio.Task[None]] = set()
        broken: list[BaseException] = []
        slots = asyncio.Semaphore(self._settings.batch_inflight)
        stop: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(self._watch(stop))

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                broken.append(task.exception())  # type: ignore[arg-type]

        try:
            for line in todo:
                # A cancel must not wait for a slot to free: race the two.
                slot = asyncio.ensure_future(slots.acquire())
                await _first(slot, stop)
                if not slot.done():
                    slot.cancel()
                if stop.done() or broken:
                    break
                task = asyncio.create_task(self._line(batch, line))
                running.add(task)
                task.add_done_callback(finished)
            while running and not stop.done() and not broken:
                await _first(*running, stop)
            outcome: Outcome = stop.result() if stop.done() else "completed"
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            # Every finished line is on disk before the batch is finalized (or the writer's failure surfaces).
            flushed = asyncio.create_task(self._results.join())
            await asyncio.wait([flushed, writer], return_when=asyncio.FIRST_COMPLETED)
            if writer.done():
                flushed.cancel()
                writer.result()
            if broken:
                # A line lost its way (Redis went away): stop here; the next driver re-runs what is not written.
                raise broken[0]
            if outcome == "expired":
                await self._expire_rest(todo, out_log, err_log)
            return outcome
        finally:
            watcher.cancel()
            for task in list(running):
                task.cancel()
            writer.cancel()

    async def _watch(self, stop: asyncio.Future[Outcome]) -> None:
        """Cancel requests (made by the route) and the end of the completion window end the run early."""
        while not stop.done():
            await asyncio.sleep(1.0)
            try:
                current = await self._records.load_batch(self.batch_id)
            except ServiceError:
                continue
            if current is None or current.batch.status == "cancelling":
                stop.set_result("cancelled")
            elif current.batch.expires_at is not None and _now() >= current.batch.expires_at:
                stop.set_result("expired")

    async def _line(self, batch: Batch, line: Line) -> None:
        crashes = 0
        while True:
            request_id = secrets.token_hex(12)
            await self._records.set_inflight(self.batch_id, line.number, request_id)
            try:
                body = await run_line(self._gateway, self._grammars, batch.endpoint, line.body, request_id)
            except (WorkerLost, StreamBroken) as exc:
                crashes += 1
                if crashes < MAX_CRASHES:
                    log.warning("batch %s line %d: %s; running it again", self.batch_id, line.number, exc)
                    await asyncio.sleep(1.0)
                    continue
                result = self._failure(line, request_id, exc)
            except (Unavailable, Overloaded):
                await asyncio.sleep(2.0)  # no capacity right now: the line waits (the window bounds this)
                continue
            except ServiceError as exc:
                result = self._failure(line, request_id, exc)
            except Exception as exc:  # a bug for this one line must not stop the batch, nor loop it forever
                log.exception("batch %s line %d failed", self.batch_id, line.number)
                result = self._failure(line, request_id, EngineError(f"internal error: {type(exc).__name__}"))
            else:
                response = BatchResponse(status_code=200, request_id=request_id, body=msgspec.Raw(body))
                result = True, self._encode(line, response, None)
            break
        await self._results.put(result)
        await self._records.set_inflight(self.batch_id, line.number, None)

    def _failure(self, line: Line, request_id: str, exc: ServiceError) -> tuple[bool, bytes]:
        body = msgspec.Raw(msgspec.json.encode(openai_body(exc)))
        return False, self._encode(line, BatchResponse(TABLE[exc.kind].status, request_id, body), None)

    @staticmethod
    def _encode(line: Line, response: BatchResponse | None, error: BatchLineError | None) -> bytes:
        item = BatchOutputLine(f"batch_req_{secrets.token_hex(16)}", line.custom_id, response, error)
        return msgspec.json.encode(item)

    async def _writer(self, out_log: ResultLog, err_log: ResultLog) -> None:
        """Appends finished lines in groups (one fsync per group), then publishes the new counts."""
        while True:
            items = [await self._results.get()]
            while not self._results.empty():
                items.append(self._results.get_nowait())
            outputs = [data for ok, data in items if ok]
            errors = [data for ok, data in items if not ok]
            if outputs:
                await asyncio.to_thread(out_log.append, outputs)
            if errors:
                await asyncio.to_thread(err_log.append, errors)
            self._counts.completed += len(outputs)
            self._counts.failed += len(errors)
            counts = msgspec.structs.replace(self._counts)
            for _ in items:
                self._results.task_done()
            try:
                await self._records.update_batch(self.batch_id, _replace(request_counts=counts))
            except ServiceError as exc:  # the counts are on disk; the next group's update carries them
                log.warning("batch %s: could not update counts: %s", self.batch_id, exc)

    async def _expire_rest(self, todo: list[Line], out_log: ResultLog, err_log: ResultLog) -> None:
        written = set(await asyncio.to_thread(out_log.recover)) | set(await asyncio.to_thread(err_log.recover))
        error = BatchLineError(
            code="batch_expired", message="This request could not be executed before the completion window expired."
        )
        rest = [self._encode(line, None, error) for line in todo if line.custom_id not in written]
        if rest:
            await asyncio.to_thread(err_log.append, rest)
            self._counts.failed += len(rest)

    # ---- finalizing ------------------------------------------------------------------------------------------

    async def _finalize(self, owner: str, out_log: ResultLog, err_log: ResultLog, outcome: Outcome) -> None:
        """Every step can be repeated: links, records and the final status are all idempotent."""
        if outcome == "completed":
            await self._records.update_batch(
                self.batch_id,
                lambda b: (
                    None
                    if b.status == "finalizing"
                    else msgspec.structs.replace(
                        b, status="finalizing", finalizing_at=_now(), request_counts=self._counts
                    )
                ),
            )
        output_id, error_id = result_file_ids(self.batch_id)
        published: dict[str, str | None] = {}
        for key, log_, file_id, count in (
            ("output", out_log, output_id, self._counts.completed),
            ("errors", err_log, error_id, self._counts.failed),
        ):
            published[key] = None
            if count:
                size = await asyncio.to_thread(self._store.publish, log_, file_id)
                name = f"{self.batch_id}_{key}.jsonl"
                obj = FileObject(id=file_id, bytes=size, created_at=_now(), filename=name, purpose="batch_output")
                await self._records.put_file(owner, obj)
                published[key] = file_id
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[outcome]
        changes: dict[str, object] = {
            "status": outcome,
            stamp: _now(),
            "request_counts": self._counts,
            "output_file_id": published["output"],
            "error_file_id": published["errors"],
        }
        await self._records.update_batch(self.batch_id, _replace(**changes))
        await self._records.retire_batch(self.batch_id)
        await asyncio.to_thread(self._store.drop_results, self.batch_id)
        log.info("batch %s %s: %s", self.batch_id, outcome, self._counts)
