"""The queue you can see into: depth, running jobs and free slots per model, and where one request stands."""

from __future__ import annotations

from herd.api.routes.common import gateway
from herd.inference import QueueStatus, RequestPosition
from litestar import get
from litestar.datastructures import State


@get("/v1/queue")
async def queue_status(state: State) -> QueueStatus:
    return await gateway(state).queue_status()


@get("/v1/queue/{request_id:str}")
async def request_position(request_id: str, state: State) -> RequestPosition:
    """`request_id` is the x-request-id of the response (the id of a chat completion without `chatcmpl-`)."""
    return await gateway(state).request_position(request_id.removeprefix("chatcmpl-").removeprefix("cmpl-"))


ROUTES = [queue_status, request_position]
