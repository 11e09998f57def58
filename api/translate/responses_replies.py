"""Internal events of one generation -> the Response object and OpenAI's stream events for it.

Deterministic: the same internal events always give the same stream events, sequence numbers, item ids and call
ids (they are derived from the response id), so any API replica that replays a background response's events from
its Redis Stream produces exactly the events another replica sent before it; a resume with `starting_after` is a
replay that skips what the client has. The sequence, as OpenAI sends it:

    response.created, response.in_progress,
    per message: output_item.added, content_part.added, output_text.delta*, output_text.done,
                 content_part.done, output_item.done
    per call:    output_item.added, function_call_arguments.delta*, function_call_arguments.done, output_item.done
    reasoning:   output_item.added, reasoning_text.delta*, reasoning_text.done, output_item.done  (before the answer)
    response.completed | response.incomplete | response.failed   (or `error`, for a failure outside the response)
"""

from __future__ import annotations

import time

import msgspec
from herd.api.errors import TABLE
from herd.api.translate.logprobs import rows
from herd.api.translate.openai_replies import speculation
from herd.api.translate.reasoning import OutputParser, Reasoning
from herd.api.translate.responses_requests import function_tools, item_id, tool_choice, wants_logprobs
from herd.api.translate.tools import CallArguments, CallEnd, CallStart, Content, Piece
from herd.api.wire import responses as wire
from herd.errors import ErrorKind, ServiceError
from herd.inference import Failed, Finished, Started, StreamEvent, TokenDelta, TokenLogprob
from herd.toolparams import signatures

_encoder = msgspec.json.Encoder()
_response_decoder = msgspec.json.Decoder(wire.Response)
_ERROR_CODES = {
    ErrorKind.RATE_LIMITED: "rate_limit_exceeded",
    ErrorKind.INVALID_REQUEST: "invalid_prompt",
    ErrorKind.CONTEXT_LENGTH_EXCEEDED: "invalid_prompt",
}


def rid_of(response_id: str) -> str:
    return response_id.removeprefix("resp_")


def initial(body: wire.ResponseCreateParams, response_id: str, created: int, previous: str | None) -> wire.Response:
    """The Response as created, echoing the request's parameters; status queued (background) or in_progress."""
    choice = tool_choice(body)
    fmt = body.text.format if body.text is not None else None
    text = wire.ResponseTextConfig()
    if fmt is not None and fmt.type == "json_object":
        text = wire.ResponseTextConfig(wire.JsonObjectFormat())
    elif fmt is not None and fmt.type == "json_schema":
        text = wire.ResponseTextConfig(
            wire.JsonSchemaFormat(fmt.name or "", fmt.schema or {}, fmt.strict, fmt.description)
        )
    tier = body.service_tier if body.service_tier in ("auto", "default", "flex", "scale", "priority") else None
    return wire.Response(
        id=response_id,
        created_at=created,
        status="queued" if body.background else "in_progress",
        model=body.model,
        output=[],
        parallel_tool_calls=body.parallel_tool_calls is not False,
        tool_choice=wire.ToolChoiceFunction(choice.name or "") if isinstance(choice, wire.ToolChoiceParam) else choice,
        tools=[wire.FunctionTool(t.name or "", t.parameters, t.strict, t.description) for t in function_tools(body)],
        text=text,
        background=bool(body.background),
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {},
        previous_response_id=previous,
        store=body.store is not False,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_logprobs=body.top_logprobs,
        truncation=body.truncation or "disabled",
        user=body.user,
        safety_identifier=body.safety_identifier,
        prompt_cache_key=body.prompt_cache_key,
        service_tier=tier,  # type: ignore[arg-type]
    )


def error_code(exc: ServiceError) -> str:
    """Response.error.code is one of OpenAI's few codes; herd's own kind goes in the message."""
    return _ERROR_CODES.get(exc.kind, "server_error")


def _logprob(items: tuple[TokenLogprob, ...]) -> list[wire.Logprob]:
    return [
        wire.Logprob(token, raw, lp, [wire.TopLogprob(t, b, p) for t, p, b in top])
        for (token, lp, raw), top in rows(items)
    ]


def _delta_logprobs(items: list[wire.Logprob]) -> list[wire.TextDeltaLogprob]:
    return [wire.TextDeltaLogprob(x.token, x.logprob, x.top_logprobs) for x in items]


class ResponseAssembler:
    """Feed internal events; get stream events back (each with the next sequence number); `response` is the
    Response as it stands. One assembler per reader: the live stream, a replay, and the plain JSON answer."""

    def __init__(self, response: wire.Response, logprobs: bool = False, tools: bool = False) -> None:
        self.response = response
        self._rid = rid_of(response.id)
        self._logprobs = logprobs
        typed = signatures((t.name, t.parameters) for t in response.tools)
        self._parser = OutputParser(tools, signatures=typed)
        self._thought: wire.ReasoningItem | None = None  # the open reasoning item
        self._thinking: list[str] = []
        self._seq = 0
        self._message: wire.OutputMessage | None = None
        self._text: list[str] = []
        self._tokens: list[wire.Logprob] = []  # the open message's token logprobs
        self._pending: list[wire.Logprob] = []  # logprobs of text the tool parser still holds back
        self._calls: dict[int, wire.FunctionCall] = {}  # parser call index -> its item
        self.terminal = False

    @classmethod
    def for_request(cls, body: wire.ResponseCreateParams, response: wire.Response) -> ResponseAssembler:
        return cls(response, wants_logprobs(body), bool(response.tools) and response.tool_choice != "none")

    @property
    def sequence_number(self) -> int:
        """The number the next event will carry."""
        return self._seq

    def _lifecycle(self, kind: str) -> wire.ResponseLifecycleEvent:
        # A copy: the response object changes as generation goes on, and events may be encoded later.
        snapshot = _response_decoder.decode(_encoder.encode(self.response))
        return wire.ResponseLifecycleEvent(type=f"response.{kind}", response=snapshot, sequence_number=self._next())

    def _next(self) -> int:
        self._seq += 1
        return self._seq - 1

    def opening(self) -> list[wire.StreamEvent]:
        """response.created, and response.in_progress unless the response waits in the queue."""
        events: list[wire.StreamEvent] = [self._lifecycle("created")]
        if self.response.status == "in_progress":
            events.append(self._lifecycle("in_progress"))
        return events

    def feed(self, event: StreamEvent) -> list[wire.StreamEvent]:
        if self.terminal:
            return []
        if isinstance(event, Started):
            if self.response.status != "queued":
                return []
            self.response.status = "in_progress"
            return [self._lifecycle("in_progress")]
        if isinstance(event, TokenDelta):
            if self._logprobs:
                self._pending.extend(_logprob(event.logprobs))
            return self._pieces(self._parser.feed(event))
        if isinstance(event, Finished):
            return self._finish(event)
        if isinstance(event, Failed):
            return self.fail(event.message, _ERROR_CODES.get(event.kind, "server_error"))
        return []

    def _pieces(self, pieces: list[Piece]) -> list[wire.StreamEvent]:
        out: list[wire.StreamEvent] = []
        for piece in pieces:
            if isinstance(piece, Content):
                out.extend(self._content(piece.text))
            elif isinstance(piece, Reasoning):
                out.extend(self._reasoning(piece.text))
            elif isinstance(piece, CallStart):
                out.extend(self._close_message("completed"))
                index = len(self.response.output)
                slot = f"o{index}"
                call = wire.FunctionCall(
                    id=item_id("fc", self._rid, slot),
                    call_id=item_id("call", self._rid, slot),
                    name=piece.name,
                    arguments="",
                    status="in_progress",
                )
                self._calls[piece.index] = call
                self.response.output.append(call)
                out.append(self._item("added", index, call))
            elif isinstance(piece, CallArguments):
                call = self._calls[piece.index]
                call.arguments += piece.fragment
                out.append(
                    wire.FunctionCallArgumentsDelta(
                        item_id=call.id,
                        output_index=self.response.output.index(call),
                        delta=piece.fragment,
                        sequence_number=self._next(),
                    )
                )
            else:
                assert isinstance(piece, CallEnd)
                call = self._calls[piece.index]
                call.arguments, call.status = piece.arguments, "completed"
                index = self.response.output.index(call)
                out.append(
                    wire.FunctionCallArgumentsDone(
                        item_id=call.id,
                        output_index=index,
                        name=call.name,
                        arguments=call.arguments,
                        sequence_number=self._next(),
                    )
                )
                out.append(self._item("done", index, call))
        return out

    def _item(self, kind: str, index: int, item: wire.OutputItem) -> wire.OutputItemEvent:
        return wire.OutputItemEvent(
            type=f"response.output_item.{kind}",
            output_index=index,
            item=msgspec.structs.replace(item, content=list(item.content))
            if isinstance(item, wire.OutputMessage)
            else msgspec.structs.replace(item),
            sequence_number=self._next(),
        )

    def _content(self, text: str) -> list[wire.StreamEvent]:
        out: list[wire.StreamEvent] = []
        message = self._message
        if message is None:
            out.extend(self._close_reasoning("completed"))
            index = len(self.response.output)
            message = wire.OutputMessage(id=item_id("msg", self._rid, f"o{index}"), status="in_progress", content=[])
            self._message, self._text, self._tokens = message, [], []
            self.response.output.append(message)
            out.append(self._item("added", index, message))
            part = wire.OutputText(text="", logprobs=[])
            out.append(self._part("added", message, part))
            message.content.append(part)
        self._text.append(text)
        logprobs, self._pending = self._pending, []
        self._tokens.extend(logprobs)
        message.content[0] = wire.OutputText(text="".join(self._text), logprobs=list(self._tokens))
        out.append(
            wire.OutputTextDelta(
                item_id=message.id,
                output_index=self.response.output.index(message),
                content_index=0,
                delta=text,
                logprobs=_delta_logprobs(logprobs),
                sequence_number=self._next(),
            )
        )
        return out

    def _part(self, kind: str, message: wire.OutputMessage, part: wire.OutputText) -> wire.ContentPartEvent:
        return wire.ContentPartEvent(
            type=f"response.content_part.{kind}",
            item_id=message.id,
            output_index=self.response.output.index(message),
            content_index=0,
            part=part,
            sequence_number=self._next(),
        )

    def _reasoning(self, text: str) -> list[wire.StreamEvent]:
        out: list[wire.StreamEvent] = []
        item = self._thought
        if item is None:
            out.extend(self._close_message("completed"))
            index = len(self.response.output)
            item = wire.ReasoningItem(id=item_id("rs", self._rid, f"o{index}"), status="in_progress", content=[])
            self._thought, self._thinking = item, []
            self.response.output.append(item)
            out.append(self._item("added", index, item))
        self._pending = []  # reasoning tokens' logprobs are not the answer's
        self._thinking.append(text)
        item.content = [wire.ReasoningText("".join(self._thinking))]
        index = self.response.output.index(item)
        out.append(
            wire.ReasoningTextDelta(
                item_id=item.id, output_index=index, content_index=0, delta=text, sequence_number=self._next()
            )
        )
        return out

    def _close_reasoning(self, status: wire.ItemStatus) -> list[wire.StreamEvent]:
        item = self._thought
        if item is None:
            return []
        self._thought = None
        item.status = status
        index = self.response.output.index(item)
        text = item.content[0].text if item.content else ""
        done = wire.ReasoningTextDone(
            item_id=item.id, output_index=index, content_index=0, text=text, sequence_number=self._next()
        )
        return [done, self._item("done", index, item)]

    def _close_message(self, status: wire.ItemStatus) -> list[wire.StreamEvent]:
        """Close the open message (and the reasoning before it, when it is still open)."""
        closed = self._close_reasoning(status)
        message = self._message
        if message is None:
            return closed
        self._message = None
        index = self.response.output.index(message)
        part = message.content[0]
        message.status = status
        done = wire.OutputTextDone(
            item_id=message.id,
            output_index=index,
            content_index=0,
            text=part.text,
            logprobs=_delta_logprobs(part.logprobs or []),
            sequence_number=self._next(),
        )
        return [*closed, done, self._part("done", message, part), self._item("done", index, message)]

    def _close_calls(self) -> None:
        for call in self._calls.values():
            if call.status == "in_progress":
                call.status = "incomplete"

    def _finish(self, event: Finished) -> list[wire.StreamEvent]:
        out = self._pieces(self._parser.finish())
        usage = event.usage
        self.response.usage = wire.ResponseUsage(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=wire.InputTokensDetails(cached_tokens=usage.cached_tokens),
            output_tokens=usage.completion_tokens,
            output_tokens_details=wire.OutputTokensDetails(self._parser.reasoning_tokens),
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
            speculation=speculation([usage]),
        )
        if event.finish_reason == "stop":
            out.extend(self._close_message("completed"))
            return [*out, *self._end("completed")]
        out.extend(self._close_message("incomplete"))
        self._close_calls()
        if event.finish_reason == "length":
            self.response.incomplete_details = wire.IncompleteDetails("max_output_tokens")
            return [*out, *self._end("incomplete")]
        return [*out, *self._end("cancelled")]

    def _end(self, status: wire.Status) -> list[wire.StreamEvent]:
        self.terminal = True
        self.response.status = status
        self.response.completed_at = int(time.time()) if status == "completed" else None
        # A cancelled response ends its stream as an incomplete one does (OpenAI names no event for it); its
        # status says cancelled.
        kind = {"completed": "completed", "failed": "failed"}.get(status, "incomplete")
        return [self._lifecycle(kind)]

    def fail(self, message: str, code: str = "server_error") -> list[wire.StreamEvent]:
        """The response failed (the worker, or herd on its behalf, gave up on it): response.failed."""
        if self.terminal:
            return []
        out = self._close_message("incomplete")
        self._close_calls()
        self.response.error = wire.ResponseError(code=code, message=message)
        return [*out, *self._end("failed")]

    def cancel(self) -> list[wire.StreamEvent]:
        """Cancelled before the worker said so (e.g. while queued): the stream ends as the worker's cancel ends it."""
        if self.terminal:
            return []
        out = self._close_message("incomplete")
        self._close_calls()
        return [*out, *self._end("cancelled")]

    def error(self, exc: ServiceError) -> wire.ErrorEvent:
        """The in-band `error` event of a stream that cannot go on (after the 200 was sent)."""
        self.terminal = True
        return wire.ErrorEvent(
            message=exc.message, code=TABLE[exc.kind].code, param=exc.param, sequence_number=self._next()
        )


def stored(response: wire.Response, max_bytes: int) -> bytes:
    """The Response as stored: whole while it fits `max_bytes`; else without its token logprobs (the one part of
    an output that can outgrow its text many times over: up to 20 alternatives a token)."""
    encoded = _encoder.encode(response)
    if len(encoded) <= max_bytes:
        return encoded
    output = [
        msgspec.structs.replace(item, content=[wire.OutputText(text=part.text) for part in item.content])
        if isinstance(item, wire.OutputMessage)
        else item
        for item in response.output
    ]
    return _encoder.encode(msgspec.structs.replace(response, output=output))


def sse_event(event: wire.StreamEvent) -> bytes:
    """`event: <type>` and `data: <json>`: both lines, as OpenAI sends them."""
    return b"event: " + event.type.encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"
