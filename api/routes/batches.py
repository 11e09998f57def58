"""OpenAI /v1/batches: create (idempotent per Idempotency-Key), retrieve, list, cancel. Owned by the caller."""

from __future__ import annotations

import secrets
import time

import msgspec
from herd.api.auth.principal import principal_of
from herd.api.batches.runner import BatchRunner
from herd.api.routes.common import SMALL_BODY, decode
from herd.api.routes.files import records
from herd.api.wire.batch import BATCH_ENDPOINTS, Batch, BatchCreateParams, BatchList
from herd.errors import InvalidRequest
from litestar import Request, get, post
from litestar.datastructures import State

AnyRequest = Request[object, object, State]
WINDOW_S = {"24h": 24 * 3600}


def runner(state: State) -> BatchRunner:
    value = state.batch_runner
    assert isinstance(value, BatchRunner)
    return value


@post("/v1/batches", status_code=200, request_max_body_size=SMALL_BODY)
async def create_batch(request: AnyRequest, state: State) -> Batch:
    body = await decode(request, BatchCreateParams)
    owner = principal_of(request).subject
    if body.endpoint not in BATCH_ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {list(BATCH_ENDPOINTS)}", param="endpoint")
    if body.completion_window not in WINDOW_S:
        raise InvalidRequest("completion_window must be '24h'", param="completion_window")
    source = await records(state).file(owner, body.input_file_id)
    if source.purpose != "batch":
        raise InvalidRequest("the input file must be uploaded with purpose 'batch'", param="input_file_id")
    now = int(time.time())
    batch = Batch(
        id=f"batch_{secrets.token_hex(16)}",
        endpoint=body.endpoint,
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        status="validating",
        created_at=now,
        expires_at=now + WINDOW_S[body.completion_window],
        metadata=body.metadata,
    )
    key = request.headers.get("idempotency-key")
    created = await records(state).create_batch(owner, batch, key)
    runner(state).wake()
    return created


@get("/v1/batches/{batch_id:str}")
async def retrieve_batch(request: AnyRequest, state: State, batch_id: str) -> Batch:
    return await records(state).batch(principal_of(request).subject, batch_id)


@get("/v1/batches")
async def list_batches(request: AnyRequest, state: State, limit: int = 20, after: str | None = None) -> BatchList:
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100", param="limit")
    found, more = await records(state).batches(principal_of(request).subject, limit, after)
    return BatchList(
        data=found, has_more=more, first_id=found[0].id if found else None, last_id=found[-1].id if found else None
    )


@post("/v1/batches/{batch_id:str}/cancel", status_code=200, request_max_body_size=SMALL_BODY)
async def cancel_batch(request: AnyRequest, state: State, batch_id: str) -> Batch:
    await records(state).batch(principal_of(request).subject, batch_id)  # 404 unless it is the caller's

    def cancelling(batch: Batch) -> Batch | None:
        if batch.status in ("cancelling", "cancelled"):
            return None
        if batch.status not in ("validating", "in_progress"):
            raise InvalidRequest(f"a batch that is {batch.status} cannot be cancelled", param="batch_id")
        return msgspec.structs.replace(batch, status="cancelling", cancelling_at=int(time.time()))

    return await records(state).update_batch(batch_id, cancelling)


ROUTES = [create_batch, retrieve_batch, list_batches, cancel_batch]
