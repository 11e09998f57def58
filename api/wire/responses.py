"""OpenAI Responses API Structs (/v1/responses), named after OpenAI's schema. Inbound types tolerate unknown fields
(and decode every item shape through one permissive Struct, so translate/ names the bad field); outbound types are
what the `openai` SDK's generated models validate strictly."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from herd.api.wire.openai import SpeculationUsage

Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Status = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "incomplete"})

# ---- requests ------------------------------------------------------------------------------------------------


class InputContent(msgspec.Struct):
    """A content part of an input message: input_text / output_text are read; any other type is refused."""

    type: str
    text: str | None = None


class InputItem(msgspec.Struct):
    """Any input item: a message (`type` may be left out), function_call, function_call_output, item_reference."""

    type: str = "message"
    id: str | None = None
    role: str | None = None
    content: str | list[InputContent] | None = None
    status: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContent] | None = None


class ToolParam(msgspec.Struct):
    """A tool; only `function` can run here (the built-in tool types are refused by name)."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceParam(msgspec.Struct):
    type: str
    name: str | None = None


class TextFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class TextConfig(msgspec.Struct):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(msgspec.Struct):
    effort: str | None = None
    summary: str | None = None


class ResponseCreateParams(msgspec.Struct):
    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[ToolParam] | None = None
    tool_choice: str | ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    stream: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    reasoning: Reasoning | None = None
    service_tier: str | None = None
    seed: int | None = None  # not in OpenAI's schema; herd honours it as chat does (reproducible sampling)


# ---- the Response object --------------------------------------------------------------------------------------


class TopLogprob(msgspec.Struct):
    token: str
    bytes: list[int]
    logprob: float


class Logprob(msgspec.Struct):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprob]


class OutputText(msgspec.Struct, tag="output_text", tag_field="type"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Logprob] | None = None


class InputText(msgspec.Struct, tag="input_text", tag_field="type"):
    text: str


class OutputMessage(msgspec.Struct, tag="message", tag_field="type"):
    id: str
    status: ItemStatus
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"


class InputMessage(msgspec.Struct, tag="message", tag_field="type"):
    """A stored input message of the user, system or developer (assistant turns are stored as OutputMessage)."""

    id: str
    role: Literal["user", "system", "developer"]
    content: list[InputText]
    status: ItemStatus = "completed"


class FunctionCall(msgspec.Struct, tag="function_call", tag_field="type"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = "completed"


class FunctionCallOutput(msgspec.Struct, tag="function_call_output", tag_field="type"):
    id: str
    call_id: str
    output: str
    status: ItemStatus = "completed"


class ReasoningText(msgspec.Struct, tag="reasoning_text", tag_field="type"):
    text: str


class ReasoningItem(msgspec.Struct, tag="reasoning", tag_field="type"):
    """What the model reasoned before its answer (its text as one reasoning_text part; no summary is made)."""

    id: str
    status: ItemStatus
    content: list[ReasoningText]
    summary: list[Any] = msgspec.field(default_factory=list)


OutputItem = OutputMessage | FunctionCall | ReasoningItem
StoredItem = InputMessage | OutputMessage | FunctionCall | FunctionCallOutput  # not decoded as a union: see store


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int
    speculation: SpeculationUsage | None = None  # herd's extension (the SDK's models allow extra fields)


class ResponseError(msgspec.Struct):
    code: str  # OpenAI's codes: server_error, rate_limit_exceeded, invalid_prompt, ...
    message: str


class IncompleteDetails(msgspec.Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class FunctionTool(msgspec.Struct, tag="function", tag_field="type"):
    name: str
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ToolChoiceFunction(msgspec.Struct, tag="function", tag_field="type"):
    name: str


class JsonSchemaFormat(msgspec.Struct, tag="json_schema", tag_field="type"):
    name: str
    schema: dict[str, Any]
    strict: bool | None = None
    description: str | None = None


class PlainTextFormat(msgspec.Struct, tag="text", tag_field="type"):
    pass


class JsonObjectFormat(msgspec.Struct, tag="json_object", tag_field="type"):
    pass


class ResponseTextConfig(msgspec.Struct):
    format: PlainTextFormat | JsonObjectFormat | JsonSchemaFormat = msgspec.field(default_factory=PlainTextFormat)


class Response(msgspec.Struct):
    id: str
    created_at: int
    status: Status
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction
    tools: list[FunctionTool]
    text: ResponseTextConfig
    object: Literal["response"] = "response"
    background: bool = False
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    previous_response_id: str | None = None
    store: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    completed_at: int | None = None


class DeletedResponse(msgspec.Struct):
    id: str
    deleted: bool = True
    object: Literal["response"] = "response"


class ItemList(msgspec.Struct):
    data: list[msgspec.Raw]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


# ---- stream events ------------------------------------------------------------------------------------------


class ResponseEvent(msgspec.Struct, kw_only=True):
    sequence_number: int


class ResponseLifecycleEvent(ResponseEvent, kw_only=True):
    """created / in_progress / queued / completed / incomplete / failed: each carries the whole Response."""

    type: str
    response: Response


class OutputItemEvent(ResponseEvent, kw_only=True):
    """response.output_item.added / .done."""

    type: str
    output_index: int
    item: OutputItem


class ContentPartEvent(ResponseEvent, kw_only=True):
    """response.content_part.added / .done."""

    type: str
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaLogprob(msgspec.Struct):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = msgspec.field(default_factory=list)


class OutputTextDelta(ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[TextDeltaLogprob]
    type: Literal["response.output_text.delta"] = "response.output_text.delta"


class OutputTextDone(ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[TextDeltaLogprob]
    type: Literal["response.output_text.done"] = "response.output_text.done"


class ReasoningTextDelta(ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    type: Literal["response.reasoning_text.delta"] = "response.reasoning_text.delta"


class ReasoningTextDone(ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    text: str
    type: Literal["response.reasoning_text.done"] = "response.reasoning_text.done"


class FunctionCallArgumentsDelta(ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    delta: str
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"


class FunctionCallArgumentsDone(ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    name: str
    arguments: str
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"


class ErrorEvent(ResponseEvent, kw_only=True):
    """The in-band error after the stream began (OpenAI's `error` event); the stream ends after it."""

    message: str
    code: str | None = None
    param: str | None = None
    type: Literal["error"] = "error"


StreamEvent = (
    ResponseLifecycleEvent
    | OutputItemEvent
    | ContentPartEvent
    | OutputTextDelta
    | OutputTextDone
    | ReasoningTextDelta
    | ReasoningTextDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
    | ErrorEvent
)
