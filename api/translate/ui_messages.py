"""AI SDK UI messages -> the internal GenerationRequest (by way of OpenAI's chat request, whose translator owns the
tools, grammar and sampling rules), and internal events -> UI message stream chunks (the way back)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import msgspec
from herd.api.grammar.schema import GrammarCache
from herd.api.translate import openai_requests
from herd.api.translate.reasoning import OutputParser, Reasoning
from herd.api.translate.tools import CallArguments, CallEnd, CallStart, Content, Piece
from herd.api.wire import openai
from herd.api.wire import ui as wire
from herd.errors import InvalidRequest
from herd.inference import Finished, GenerationRequest, TokenDelta
from herd.toolparams import Signature

_REASONS: dict[str, wire.FinishReason] = {"stop": "stop", "length": "length", "tool_calls": "tool-calls"}


def _tool_name(part: wire.UIMessagePart) -> str | None:
    if part.type == "dynamic-tool":
        return part.tool_name
    return part.type.removeprefix("tool-") if part.type.startswith("tool-") else None


def _assistant(message: wire.UIMessage, index: int) -> list[openai.ChatCompletionMessageParam]:
    """An assistant UI message: its text, its tool calls and, for calls the client ran, one tool message each."""
    text, calls, results = [], [], []
    for j, part in enumerate(message.parts):
        name = _tool_name(part)
        if part.type == "text" and part.text:
            text.append(part.text)
        elif name is not None:
            if not part.tool_call_id:
                raise InvalidRequest("a tool part needs toolCallId", param=f"messages[{index}].parts[{j}].toolCallId")
            arguments = json.dumps(part.input if part.input is not None else {})
            calls.append(openai.ChatCompletionMessageToolCall(part.tool_call_id, openai.FunctionCall(name, arguments)))
            if part.state == "output-available":
                output = part.output if isinstance(part.output, str) else json.dumps(part.output)
                results.append(openai.ChatCompletionMessageParam("tool", output, tool_call_id=part.tool_call_id))
            elif part.state == "output-error":
                content = f"error: {part.error_text or ''}"
                results.append(openai.ChatCompletionMessageParam("tool", content, tool_call_id=part.tool_call_id))
    turn = openai.ChatCompletionMessageParam("assistant", "".join(text), tool_calls=calls or None)
    return [turn, *results]


def chat_request(body: wire.UIChatRequest, request_id: str, grammars: GrammarCache) -> GenerationRequest:
    if not body.model:
        raise InvalidRequest("model is required (send it in the transport's body)", param="model")
    messages = [openai.ChatCompletionMessageParam("system", body.system)] if body.system else []
    for i, message in enumerate(body.messages):
        if message.role == "assistant":
            messages.extend(_assistant(message, i))
            continue
        text = "".join(part.text or "" for part in message.parts if part.type == "text")
        unsupported = [p.type for p in message.parts if p.type not in ("text", "step-start", "reasoning")]
        if unsupported:
            raise InvalidRequest(f"unsupported part type {unsupported[0]!r}", param=f"messages[{i}].parts")
        messages.append(openai.ChatCompletionMessageParam(message.role, text))
    chat = openai.ChatCompletionRequest(
        model=body.model,
        messages=messages,
        stream=True,
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.max_tokens,
        seed=body.seed,
        tools=body.tools or None,
        tool_choice=body.tool_choice,
    )
    req = openai_requests.chat_request(chat, request_id, grammars)
    # A resumable answer's events also go to the durable log (channels.durable_events) that a reconnect replays.
    return msgspec.structs.replace(req, durable=True) if resumable(body) else req


def resumable(body: wire.UIChatRequest) -> bool:
    return body.resumable and bool(body.id)


class UIStream:
    """One answer as UI chunks: start, a reasoning block per run of reasoning (before the answer it leads to), a text
    block per run of text, each tool call's input, finish with usage."""

    def __init__(
        self, message_id: str, model: str, tools: bool, signatures: Mapping[str, Signature] | None = None
    ) -> None:
        """`signatures`: the offered tools' parameter types (herd.toolparams), for calls that are not JSON."""
        self._message_id, self._model = message_id, model
        self._parser = OutputParser(tools, signatures=signatures)
        self._open: tuple[str, str] | None = None  # the block being written: its kind ("text", "reasoning") and id
        self._blocks = {"text": 0, "reasoning": 0}
        self._calls: dict[int, tuple[str, str]] = {}  # call index -> (toolCallId, tool name)

    @property
    def message_id(self) -> str:
        return self._message_id

    def opening(self) -> list[wire.UIMessageChunk]:
        return [wire.Start(message_id=self._message_id), wire.StartStep()]

    def _write(self, kind: str, text: str) -> list[wire.UIMessageChunk]:
        """`text` into the open block of its kind, closing a block of the other kind and opening one as needed."""
        chunks: list[wire.UIMessageChunk] = []
        if self._open is not None and self._open[0] != kind:
            chunks += self._close()
        if self._open is None:
            self._blocks[kind] += 1
            self._open = (kind, f"{kind}-{self._blocks[kind]}")
            chunks.append(wire.TextStart(self._open[1]) if kind == "text" else wire.ReasoningStart(self._open[1]))
        block = self._open[1]
        chunks.append(wire.TextDelta(block, text) if kind == "text" else wire.ReasoningDelta(block, text))
        return chunks

    def _close(self) -> list[wire.UIMessageChunk]:
        if self._open is None:
            return []
        (kind, block), self._open = self._open, None
        return [wire.TextEnd(block) if kind == "text" else wire.ReasoningEnd(block)]

    def feed(self, event: TokenDelta) -> list[wire.UIMessageChunk]:
        return self._pieces(self._parser.feed(event))

    def _pieces(self, pieces: list[Piece]) -> list[wire.UIMessageChunk]:
        chunks: list[wire.UIMessageChunk] = []
        for piece in pieces:
            if isinstance(piece, Content | Reasoning):
                if piece.text:
                    chunks += self._write("text" if isinstance(piece, Content) else "reasoning", piece.text)
                continue
            chunks += self._close()
            if isinstance(piece, CallStart):
                # Named after the message, so a replay of the answer names its calls alike.
                self._calls[piece.index] = (f"call_{self._message_id.removeprefix('msg-')}_{piece.index}", piece.name)
                chunks.append(wire.ToolInputStart(*self._calls[piece.index]))
            elif isinstance(piece, CallArguments):
                chunks.append(wire.ToolInputDelta(self._calls[piece.index][0], piece.fragment))
            elif isinstance(piece, CallEnd):
                call_id, name = self._calls[piece.index]
                chunks.append(wire.ToolInputAvailable(call_id, name, msgspec.json.decode(piece.arguments or "{}")))
        return chunks

    def finish(self, event: Finished) -> list[wire.UIMessageChunk]:
        chunks = self._pieces(self._parser.finish())
        chunks += self._close()
        reason = "tool_calls" if self._calls else event.finish_reason
        usage = event.usage
        rate = usage.completion_tokens / (usage.eval_ns / 1e9) if usage.eval_ns else None
        metadata = wire.Metadata(self._model, wire.Usage(usage.prompt_tokens, usage.completion_tokens), rate)
        return [*chunks, wire.FinishStep(), wire.Finish(_REASONS.get(reason, "other"), metadata)]

    def failed(self, message: str) -> list[wire.UIMessageChunk]:
        return [*self._close(), wire.Error(message), wire.Finish("error")]
