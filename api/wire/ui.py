"""The AI SDK's UI message stream protocol (`x-vercel-ai-ui-message-stream: v1`): what `useChat`'s
DefaultChatTransport POSTs (UI messages) and the chunks it reads back as SSE `data:` frames, ending `data: [DONE]`.

Names and fields follow the `ai` npm package's `UIMessage` and `UIMessageChunk` (camelCase on the wire)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from herd.api.wire.openai import ChatCompletionTool, MaxTokens, Temperature, TopP

HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}


class UIMessagePart(msgspec.Struct, rename="camel"):
    """One part of a UI message. `text`/`reasoning` carry `text`; a `tool-{name}` (or `dynamic-tool`) part carries a
    call: its id, input and, once the client ran it, `output` (state `output-available`) or `errorText`."""

    type: str
    text: str | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None  # dynamic-tool parts name the tool here instead of in `type`
    state: str | None = None
    input: Any = None
    output: Any = None
    error_text: str | None = None


class UIMessage(msgspec.Struct):
    role: Literal["system", "user", "assistant"]
    parts: list[UIMessagePart]
    id: str = ""
    metadata: Any = None


class UIChatRequest(msgspec.Struct, rename="camel"):
    """DefaultChatTransport's body (`id`, `messages`, `trigger`, `messageId`) plus what the app's `body` adds:
    the model, sampling settings and OpenAI-shaped tools."""

    messages: Annotated[list[UIMessage], msgspec.Meta(min_length=1)]
    model: str = ""
    id: str = ""
    trigger: str | None = None
    message_id: str | None = None
    system: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    seed: int | None = None
    tools: list[ChatCompletionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | None = None
    # herd's: keep the answer resumable (useChat's `resume: true`). The generation then outlives a dropped connection
    # (a reload) and GET {api}/{id}/stream replays it; stop it with DELETE {api}/{id}/stream. Needs `id`.
    resumable: bool = False


# ---- the chunks of the stream ----------------------------------------------------------------------------------


class Start(msgspec.Struct, tag="start", tag_field="type", rename="camel", omit_defaults=True):
    message_id: str | None = None
    message_metadata: Any = None


class StartStep(msgspec.Struct, tag="start-step", tag_field="type"):
    pass


class TextStart(msgspec.Struct, tag="text-start", tag_field="type"):
    id: str


class TextDelta(msgspec.Struct, tag="text-delta", tag_field="type"):
    id: str
    delta: str


class TextEnd(msgspec.Struct, tag="text-end", tag_field="type"):
    id: str


class ReasoningStart(msgspec.Struct, tag="reasoning-start", tag_field="type"):
    id: str


class ReasoningDelta(msgspec.Struct, tag="reasoning-delta", tag_field="type"):
    id: str
    delta: str


class ReasoningEnd(msgspec.Struct, tag="reasoning-end", tag_field="type"):
    id: str


class ToolInputStart(msgspec.Struct, tag="tool-input-start", tag_field="type", rename="camel"):
    tool_call_id: str
    tool_name: str


class ToolInputDelta(msgspec.Struct, tag="tool-input-delta", tag_field="type", rename="camel"):
    tool_call_id: str
    input_text_delta: str


class ToolInputAvailable(msgspec.Struct, tag="tool-input-available", tag_field="type", rename="camel"):
    tool_call_id: str
    tool_name: str
    input: Any


class FinishStep(msgspec.Struct, tag="finish-step", tag_field="type"):
    pass


FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other"]


class Finish(msgspec.Struct, tag="finish", tag_field="type", rename="camel", omit_defaults=True):
    finish_reason: FinishReason | None = None
    message_metadata: Any = None


class Error(msgspec.Struct, tag="error", tag_field="type", rename="camel"):
    error_text: str


class Usage(msgspec.Struct, rename="camel"):
    input_tokens: int
    output_tokens: int


class Metadata(msgspec.Struct, rename="camel"):
    """herd's `messageMetadata` on the finish chunk: what the chat page shows under an answer."""

    model: str
    usage: Usage
    tokens_per_second: float | None


UIMessageChunk = (
    Start
    | StartStep
    | TextStart
    | TextDelta
    | TextEnd
    | ReasoningStart
    | ReasoningDelta
    | ReasoningEnd
    | ToolInputStart
    | ToolInputDelta
    | ToolInputAvailable
    | FinishStep
    | Finish
    | Error
)
