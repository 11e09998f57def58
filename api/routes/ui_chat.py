"""The AI SDK's UI message stream at /v1/ui/chat: any `useChat` frontend points its DefaultChatTransport here."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

from herd.api.events import EventStream
from herd.api.relay import close_shielded
from herd.api.routes.common import decode, grammars, keep_alive, open_streaming, request_id
from herd.api.streaming import SSE_DONE, sse
from herd.api.translate import ui_messages
from herd.api.translate.ui_messages import UIStream
from herd.api.wire import ui as wire
from herd.errors import ServiceError
from herd.inference import Finished
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

AnyRequest = Request[object, object, State]
PATH = "/v1/ui/chat"


@post(PATH, status_code=200)
async def ui_chat(request: AnyRequest, state: State) -> Stream:
    body = await decode(request, wire.UIChatRequest)
    req = ui_messages.chat_request(body, request_id(request), grammars(state))
    [stream], pending = await open_streaming(request, state, [req])
    answer = UIStream(f"msg-{secrets.token_hex(12)}", body.model, req.tool_constraint is not None)
    frames = _frames(stream, answer, pending, state.gateway.settings.sse_keepalive_s)
    return Stream(frames, media_type="text/event-stream", headers=wire.HEADERS)


async def _frames(
    stream: EventStream, answer: UIStream, pending: asyncio.Future[object] | None, every: float
) -> AsyncIterator[bytes]:
    try:
        async for comment in keep_alive(pending, every):
            yield comment
        for chunk in answer.opening():
            yield sse(chunk)
        async for event in stream.deltas():
            for chunk in answer.finish(event) if isinstance(event, Finished) else answer.feed(event):
                yield sse(chunk)
    except ServiceError as exc:
        for chunk in answer.failed(exc.message):
            yield sse(chunk)
    finally:
        await close_shielded(stream)
    yield SSE_DONE


@get(f"{PATH}/{{chat_id:str}}/stream")
async def ui_chat_resume(chat_id: str) -> Response[None]:
    """useChat's reconnect (`resume: true`): 204, no stream to resume (answers are not kept after their request)."""
    return Response(None, status_code=204)


ROUTES = [ui_chat, ui_chat_resume]
