"""Ollama /api request and response Structs, named as in Ollama's `api/types.go`.

Inbound types ignore unknown fields (and unknown `options` keys, as Ollama does: old clients still send the removed
`mirostat*`). Outbound fields that Ollama marks `omitempty` are left out when empty.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

Role = Literal["system", "user", "assistant", "tool"]
DoneReason = Literal["stop", "length", "load", "unload"]


class Options(msgspec.Struct):
    """Runtime options herd acts on, plus the ones it accepts and ignores (listed so a wrong type is still a 400)."""

    num_predict: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    typical_p: float | None = None
    # Accepted and ignored: num_ctx is fixed per worker at load time; num_keep only matters for context shifting,
    # which herd does not do (a prompt that does not fit is refused).
    num_ctx: int | None = None
    num_keep: int | None = None


class ToolCallFunction(msgspec.Struct):
    name: str
    arguments: dict[str, Any] = {}
    index: int | UnsetType = UNSET


class ToolCall(msgspec.Struct):
    function: ToolCallFunction
    id: str | UnsetType = UNSET


class Message(msgspec.Struct):
    role: Role
    content: str | None = ""  # null is read as empty, as Go reads it into a string
    images: list[str] | UnsetType | None = UNSET
    thinking: str | UnsetType | None = UNSET
    tool_calls: list[ToolCall] | UnsetType | None = UNSET
    tool_name: str | UnsetType | None = UNSET
    tool_call_id: str | UnsetType | None = UNSET


Format = str | dict[str, Any]


class ToolFunction(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(pattern="^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(msgspec.Struct):
    function: ToolFunction
    type: str = "function"


KeepAlive = str | float


class ChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[Message] = []
    stream: bool | None = None  # absent means true: Ollama streams unless told not to
    format: Format | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    tools: list[Tool] | None = None
    # herd's extension (Ollama has none): OpenAI's tool_choice words; "required" makes the model call a tool.
    tool_choice: Literal["auto", "required", "none"] | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None


class GenerateRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] | None = None
    raw: bool = False
    stream: bool | None = None
    format: Format | None = None
    images: list[str] | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]


class Logprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob] | UnsetType = UNSET


class ChatResponse(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    message: Message
    done: bool
    done_reason: DoneReason | UnsetType = UNSET
    total_duration: int = 0
    load_duration: int | UnsetType = UNSET  # sent on the final chunk of a generation, even when 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    logprobs: list[Logprob] | UnsetType = UNSET
    draft_count: int | UnsetType = UNSET  # herd extension: speculative decoding's drafted tokens
    draft_accepted_count: int | UnsetType = UNSET  # and the ones the model accepted


class GenerateResponse(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    response: str
    done: bool
    # Ollama sends `context` only on the final line; the AI SDK's Ollama provider requires it on every line.
    context: list[int]
    thinking: str | UnsetType = UNSET  # the model's reasoning (a request's think)
    done_reason: DoneReason | UnsetType = UNSET
    total_duration: int = 0
    load_duration: int | UnsetType = UNSET  # sent on the final chunk of a generation, even when 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    logprobs: list[Logprob] | UnsetType = UNSET
    draft_count: int | UnsetType = UNSET  # herd extension: speculative decoding's drafted tokens
    draft_accepted_count: int | UnsetType = UNSET  # and the ones the model accepted


class ModelDetails(msgspec.Struct):
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class ListModelResponse(msgspec.Struct):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ListResponse(msgspec.Struct):
    models: list[ListModelResponse]


class ProcessModelResponse(msgspec.Struct):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class ProcessResponse(msgspec.Struct):
    models: list[ProcessModelResponse]


class ShowRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # the deprecated spelling of `model`, still sent by old clients
    verbose: bool = False


class ShowResponse(msgspec.Struct):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
    license: str = ""
    system: str = ""


class VersionResponse(msgspec.Struct):
    version: str


class ErrorResponse(msgspec.Struct):
    error: str


class EmbedRequest(msgspec.Struct):
    model: str = ""
    input: str | list[str] = ""
    truncate: bool = True  # Ollama cuts an input longer than the context unless told not to
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class EmbedResponse(msgspec.Struct):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class EmbeddingsRequest(msgspec.Struct):
    """The legacy single-input route."""

    model: str = ""
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class EmbeddingsResponse(msgspec.Struct):
    embedding: list[float]


# ---- model management (create, copy, delete, pull, blobs) ------------------------------------------------------


class CreateRequest(msgspec.Struct):
    model: str = ""
    from_: str = msgspec.field(default="", name="from")
    files: dict[str, str] | None = None  # file name -> blob digest
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    stream: bool | None = None
    name: str = ""  # the deprecated spelling of `model`
    modelfile: str | None = None  # what older clients send instead of the fields above (api/models/modelfile.py)


class CopyRequest(msgspec.Struct):
    source: str = ""
    destination: str = ""


class DeleteRequest(msgspec.Struct):
    model: str = ""
    name: str = ""


class PullRequest(msgspec.Struct):
    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool | None = None


class ProgressResponse(msgspec.Struct, omit_defaults=True):
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0
