"""Internal request and event types: both wire protocols translate into GenerationRequest; workers emit StreamEvents."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from herd.errors import ErrorKind

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled"]


class ToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A function call the assistant made earlier in the conversation; `arguments` is JSON text."""

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Role
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    reasoning: str = ""  # an assistant turn's reasoning, sent back (templates that show it render it)


class Tool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A function the model may call, shown to it in the prompt; `parameters` is its JSON schema as JSON text."""

    name: str
    description: str = ""
    parameters: str = "{}"


class Grammar(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A GBNF grammar (compiled in the API) the output must follow; with `triggers`, only from the first trigger on."""

    gbnf: str
    triggers: tuple[str, ...] = ()


class ToolConstraint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Tool calls to constrain in the model's own call syntax (herd.toolformat), which only the worker knows.

    The API compiled and checked each named tool's arguments schema: `rules` holds GBNF rules with the arguments of
    `names[i]` as rule `args-i` (and the JSON primitives); the worker wraps them in its template's call syntax.
    """

    names: tuple[str, ...]
    rules: str
    parallel: bool = False
    forced: bool = False  # required or named: a call from the first token; else once the model opens one


class SamplingParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-sequence sampler settings; temperature 0 means greedy."""

    temperature: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, msgspec.Meta(ge=0)] = 0
    min_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    typical_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0  # locally typical sampling; 1 is off
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)


class GenerationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One sequence to generate. Exactly one of `messages` (chat template applied by the worker) or `prompt`."""

    id: str
    model: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    sampling: SamplingParams = SamplingParams()
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None  # None: up to the context
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()  # described to the model in the prompt (chat only)
    grammar: Grammar | None = None
    tool_constraint: ToolConstraint | None = None  # used when `grammar` is None
    # Reasoning asked for (herd.reasoning.Effort: "off", "on", "low", "medium", "high"); None: the model's default.
    reasoning: Literal["off", "on", "low", "medium", "high"] | None = None
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None  # None: off; else how many alternatives
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] = 1  # choices, forked from one prefill of the prompt
    suffix: str | None = None  # fill in the middle between prompt and suffix (models with infill tokens)
    # Ollama's /api/generate `context`: token ids of an earlier exchange, put before the prompt as they are.
    context_tokens: tuple[Annotated[int, msgspec.Meta(ge=0)], ...] = ()
    fit_context: bool = False  # a max_tokens beyond the context's room is cut to it (Ollama) instead of refused
    return_tokens: bool = False  # Finished carries the prompt and generated token ids (Ollama's returned `context`)
    durable: bool = False  # the worker also appends its events to channels.durable_events(id) (a Redis Stream)
    enqueued_at: float = 0.0  # time.time() when the API queued it
    traceparent: str | None = None
    tracestate: str | None = None  # W3C: vendors' trace state, carried with traceparent


class EmbeddingRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Pooled, L2-normalised embeddings of each input (text, or token ids already tokenized by the client)."""

    id: str
    model: str
    inputs: tuple[str | tuple[int, ...], ...]
    truncate: bool = False  # cut inputs longer than the context instead of refusing them
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None  # keep the first N dimensions, renormalised
    enqueued_at: float = 0.0
    traceparent: str | None = None
    tracestate: str | None = None


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV cells were reused from an earlier request
    prompt_eval_ns: int = 0
    eval_ns: int = 0
    queue_ns: int = 0
    speculative: bool = False  # the worker drafted for this sequence (speculative decoding was on for it)
    drafted_tokens: int = 0  # tokens proposed by the draft model or prompt lookup
    accepted_tokens: int = 0  # of those, tokens the model confirmed (each saved one decode step)


class Started(msgspec.Struct, frozen=True, tag="started"):
    """The worker admitted the request: the prompt fits, generation is about to begin."""

    seq: int
    worker_id: str
    prompt_tokens: int


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    """A generated token's bytes and log-probability, with the most likely alternatives at its position."""

    piece: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


class TokenDelta(msgspec.Struct, frozen=True, tag="delta"):
    seq: int
    text: str
    tokens: int  # how many generated tokens this text covers (it may be 0 while a stop string is pending)
    index: int = 0  # which choice (n > 1)
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token generated since the last delta, when asked for
    # A choice's first delta, when the request offered tools, names the syntax its calls come in (herd.toolformat).
    tool_format: str | None = None
    # A choice's first delta, for a chat model that reasons, names how its reasoning comes in the text (herd.reasoning):
    # "think" (<think> blocks), "thinking" (the prompt opened <think>: the text starts inside it) or "harmony".
    reasoning: str | None = None


class Finished(msgspec.Struct, frozen=True, tag="finished"):
    """One choice ended; `usage` has the whole prompt and this choice's completion (the API counts the prompt once)."""

    seq: int
    finish_reason: FinishReason
    usage: Usage
    tokens: tuple[int, ...] = ()  # prompt + generated token ids, only when the request set return_tokens
    index: int = 0


class Embedded(msgspec.Struct, frozen=True, tag="embedded"):
    """All vectors of an EmbeddingRequest: float32 little-endian, `dimensions` floats per input, in input order."""

    seq: int
    vectors: bytes
    dimensions: int
    prompt_tokens: int


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    seq: int
    kind: ErrorKind
    message: str
    param: str | None = None


StreamEvent = Started | TokenDelta | Finished | Embedded | Failed


class Buckets(msgspec.Struct, frozen=True):
    """A histogram a worker keeps since it started: observations per bucket (upper `bounds`, then +Inf), sum, count."""

    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    sum: float = 0.0
    count: int = 0


class EngineStats(msgspec.Struct, frozen=True):
    """The engine's own measures in a heartbeat (cumulative since the worker started, except the KV gauges)."""

    prefill_s: Buckets = Buckets()  # per request: admission to first token
    decode_s: Buckets = Buckets()  # per request: first token to the end
    step_tokens: Buckets = Buckets()  # tokens in each llama_decode of the decode loop (batch shape)
    prompt_tokens: int = 0  # prompt tokens of admitted requests, and of those the ones found in the prefix cache
    cached_tokens: int = 0
    verify_steps: int = 0  # speculative decoding: steps that verified a non-empty draft
    kv_used: int = 0  # KV cells holding a token (running sequences and cached prefixes), of kv_total
    kv_total: int = 0


class WorkerStatus(msgspec.Struct, frozen=True):
    """A worker's heartbeat record."""

    worker_id: str
    models: tuple[str, ...]
    n_ctx: int
    slots_total: int
    slots_busy: int
    tokens_generated: int
    requests_done: int
    requests_cancelled: int
    pid: int
    host: str
    heartbeat_at: float
    tokens_drafted: int = 0  # speculative decoding: tokens proposed, and the ones the model confirmed
    tokens_accepted: int = 0
    engine: EngineStats = EngineStats()
    # the stamp of the latest announcement the worker had handled (taken or handed back) when it wrote this: the API
    # counts its own later announcements to it as busy slots (api/slots.py); 0: none yet, -1: not reported
    announced: int = -1
    holding: tuple[str, ...] = ()  # the jobs whose slots are taken (starting or generating) when it wrote this


class RequestStats(msgspec.Struct, frozen=True):
    """Written by the worker when a request leaves the batch (used by tests and operators)."""

    request_id: str
    worker_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ended_at: float


# ---- the fleet view: herd's own /v1/queue answers (api/gateway.py builds them from the queues and heartbeats) ----


class ModelQueue(msgspec.Struct):
    model: str
    waiting: int  # jobs no worker has started yet
    running: int  # jobs a worker is running
    oldest_wait_s: float  # how long the oldest waiting job has waited (0 when none waits)
    workers: int  # live workers serving the model
    slots_total: int
    slots_busy: int


class QueueStatus(msgspec.Struct):
    models: list[ModelQueue]
    object: Literal["queue"] = "queue"


RequestState = Literal["waiting", "running", "done", "unknown"]


class RequestPosition(msgspec.Struct):
    id: str
    state: RequestState
    model: str | None = None
    position: int | None = None  # 0 = next to start, among the model's waiting jobs
    object: Literal["queue.request"] = "queue.request"
