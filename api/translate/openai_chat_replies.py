"""Internal events of a chat request -> OpenAI chat chunks and the whole ChatCompletion (content, tool calls, logprobs).

One assembler serves both shapes: the stream route sends the chunks it returns, the plain route reads `completion()`
at the end. Tool calls follow OpenAI's streaming rules: per call an `index`; the first delta has `id`, `type` and
`function.name` (with empty arguments), later ones only `function.arguments` fragments; `finish_reason: tool_calls`.
A request with the legacy `functions` gets the legacy shape: `function_call` (one call) and `finish_reason:
function_call`.
What a reasoning model reasoned (api/translate/reasoning.py) goes out as `reasoning_content`, in deltas and on the
message, as vLLM, llama-server and DeepSeek send it; its tokens in `usage.completion_tokens_details`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from herd.api.translate.logprobs import rows
from herd.api.translate.openai_replies import fingerprint, speculation
from herd.api.translate.reasoning import OutputParser, Reasoning
from herd.api.translate.tools import CallArguments, CallEnd, CallStart, Content, Piece
from herd.api.wire import openai as wire
from herd.inference import Finished, TokenDelta, TokenLogprob, Usage
from herd.toolparams import Signature
from msgspec import UNSET


def token_logprobs(items: tuple[TokenLogprob, ...]) -> list[wire.ChatCompletionTokenLogprob]:
    return [
        wire.ChatCompletionTokenLogprob(*head, top_logprobs=[wire.TopLogprob(*alt) for alt in top])
        for head, top in rows(items)
    ]


@dataclass(slots=True)
class _Choice:
    parser: OutputParser
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[wire.ChatCompletionMessageToolCall] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)
    logprobs: list[wire.ChatCompletionTokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


class ChatAssembler:
    def __init__(
        self,
        request_id: str,
        model: str,
        created: int,
        n: int,
        tools: bool,
        logprobs: bool,
        include_usage: bool,
        functions: bool = False,
        signatures: Mapping[str, Signature] | None = None,
    ) -> None:
        """`signatures`: the offered tools' parameter types (herd.toolparams), for calls that are not JSON."""
        self._functions = functions
        self._id = f"chatcmpl-{request_id}"
        self._model = model
        self._fingerprint = fingerprint(model)
        self._created = created
        self._logprobs = logprobs
        self._include_usage = include_usage
        self._choices = [_Choice(OutputParser(tools, signatures=signatures)) for _ in range(n)]

    def _chunk(
        self,
        index: int,
        delta: wire.ChoiceDelta,
        finish_reason: str | None = None,
        logprobs: list[wire.ChatCompletionTokenLogprob] | None = None,
    ) -> wire.ChatCompletionChunk:
        choice_logprobs = wire.ChoiceLogprobs(content=logprobs) if logprobs is not None else None
        return wire.ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[wire.ChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=choice_logprobs)],
            usage=None if self._include_usage else UNSET,
            system_fingerprint=self._fingerprint,
        )

    def opening(self) -> list[wire.ChatCompletionChunk]:
        """Each choice's first chunk: the assistant role."""
        return [self._chunk(i, wire.ChoiceDelta(role="assistant", content="")) for i in range(len(self._choices))]

    def feed(self, index: int, event: TokenDelta | Finished) -> list[wire.ChatCompletionChunk]:
        choice = self._choices[index]
        if isinstance(event, Finished):
            choice.usage = event.usage
            pieces: list[Piece] = choice.parser.finish()
            chunks = self._pieces(index, choice, pieces, None)
            called = "function_call" if self._functions else "tool_calls"
            choice.finish_reason = called if choice.calls else event.finish_reason
            return [*chunks, self._chunk(index, wire.ChoiceDelta(), choice.finish_reason)]
        logprobs = token_logprobs(event.logprobs) if self._logprobs else None
        if logprobs:
            choice.logprobs.extend(logprobs)
        pieces = choice.parser.feed(event)
        chunks = self._pieces(index, choice, pieces, logprobs)
        if not chunks and logprobs:  # text held back (a possible tool call): its logprobs still go out now
            chunks = [self._chunk(index, wire.ChoiceDelta(), None, logprobs)]
        return chunks

    def _pieces(
        self,
        index: int,
        choice: _Choice,
        pieces: list[Piece],
        logprobs: list[wire.ChatCompletionTokenLogprob] | None,
    ) -> list[wire.ChatCompletionChunk]:
        chunks = []
        for piece in pieces:
            if isinstance(piece, Content):
                choice.content.append(piece.text)
                delta = wire.ChoiceDelta(content=piece.text)
            elif isinstance(piece, Reasoning):
                choice.reasoning.append(piece.text)
                delta = wire.ChoiceDelta(reasoning_content=piece.text)
            elif isinstance(piece, CallStart):
                call_id = f"call_{secrets.token_hex(12)}"
                choice.call_ids.append(call_id)
                function = wire.ChoiceDeltaFunction(name=piece.name, arguments="")
                delta = (
                    wire.ChoiceDelta(function_call=function)
                    if self._functions
                    else wire.ChoiceDelta(
                        tool_calls=[
                            wire.ChoiceDeltaToolCall(index=piece.index, id=call_id, type="function", function=function)
                        ]
                    )
                )
            elif isinstance(piece, CallArguments):
                function = wire.ChoiceDeltaFunction(arguments=piece.fragment)
                delta = (
                    wire.ChoiceDelta(function_call=function)
                    if self._functions
                    else wire.ChoiceDelta(tool_calls=[wire.ChoiceDeltaToolCall(index=piece.index, function=function)])
                )
            else:
                assert isinstance(piece, CallEnd)
                call = wire.FunctionCall(name=piece.name, arguments=piece.arguments)
                choice.calls.append(wire.ChatCompletionMessageToolCall(id=choice.call_ids[piece.index], function=call))
                continue
            chunks.append(self._chunk(index, delta, None, logprobs))
            logprobs = None  # the tokens' logprobs ride on the first chunk their text made
        return chunks

    def usage(self) -> wire.CompletionUsage:
        usages = [c.usage for c in self._choices if c.usage is not None]
        prompt = usages[0].prompt_tokens if usages else 0
        completion = sum(u.completion_tokens for u in usages)
        cached = usages[0].cached_tokens if usages else 0
        reasoned = sum(c.parser.reasoning_tokens for c in self._choices)
        return wire.CompletionUsage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=wire.PromptTokensDetails(cached_tokens=cached),
            completion_tokens_details=wire.CompletionTokensDetails(reasoned) if reasoned else UNSET,
            speculation=speculation(usages),
        )

    def usage_chunk(self) -> wire.ChatCompletionChunk:
        return wire.ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[],
            usage=self.usage(),
            system_fingerprint=self._fingerprint,
        )

    def completion(self) -> wire.ChatCompletion:
        choices = []
        for i, choice in enumerate(self._choices):
            content = "".join(choice.content)
            calls = choice.calls if choice.calls and not self._functions else UNSET
            legacy = choice.calls[0].function if choice.calls and self._functions else UNSET
            message = wire.ChatCompletionMessage(
                content=content if content or not choice.calls else None,
                tool_calls=calls,
                function_call=legacy,
                reasoning_content="".join(choice.reasoning) if choice.reasoning else UNSET,
            )
            logprobs = wire.ChoiceLogprobs(content=choice.logprobs) if self._logprobs else None
            choices.append(wire.Choice(index=i, message=message, finish_reason=choice.finish_reason, logprobs=logprobs))
        return wire.ChatCompletion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=choices,
            usage=self.usage(),
            system_fingerprint=self._fingerprint,
        )
