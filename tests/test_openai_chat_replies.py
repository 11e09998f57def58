"""api/translate/openai_chat_replies.py as a unit: a chat request's events -> ChatCompletionChunks and the whole
ChatCompletion, each validated strictly with the openai SDK's own pydantic types (content, tool calls as OpenAI streams
them, the legacy function_call, logprobs, n > 1 and usage)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgspec
import pytest
from herd.api.translate.openai_chat_replies import ChatAssembler
from herd.inference import Finished, TokenDelta, TokenLogprob, Usage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
USAGE = Usage(prompt_tokens=7, completion_tokens=3, cached_tokens=4)
CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def sdk(kind: type[M], obj: object) -> M:
    """The object as a client gets it: JSON, read by the SDK's type in strict mode."""
    return kind.model_validate(json.loads(msgspec.json.encode(obj)), strict=True)


def assembler(**options: Any) -> ChatAssembler:
    settings = {"n": 1, "tools": False, "logprobs": False, "include_usage": False, **options}
    return ChatAssembler("r1", "smollm2:135m", 1_700_000_000, **settings)


def stream(chat: ChatAssembler, events: list[tuple[int, TokenDelta | Finished]]) -> list[ChatCompletionChunk]:
    objects = [*chat.opening()]
    for index, event in events:
        objects += chat.feed(index, event)
    return [sdk(ChatCompletionChunk, o) for o in objects]


def test_content_streams_as_chunks_and_whole() -> None:
    chat = assembler(include_usage=True)
    chunks = stream(chat, [(0, TokenDelta(1, "Hel", 1)), (0, TokenDelta(2, "lo", 2)), (0, Finished(3, "stop", USAGE))])
    chunks.append(sdk(ChatCompletionChunk, chat.usage_chunk()))
    assert {(c.id, c.model, c.object, c.created) for c in chunks} == {
        ("chatcmpl-r1", "smollm2:135m", "chat.completion.chunk", 1_700_000_000)
    }
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None, None, None, "stop"]
    assert all(c.usage is None for c in chunks[:-1])  # include_usage: null until the last chunk
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (7, 3, 10)
    assert last.usage.prompt_tokens_details is not None and last.usage.prompt_tokens_details.cached_tokens == 4
    whole = sdk(ChatCompletion, chat.completion())
    assert (whole.id, whole.object, whole.choices[0].message.content, whole.choices[0].finish_reason) == (
        "chatcmpl-r1",
        "chat.completion",
        "Hello",
        "stop",
    )
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].logprobs is None
    assert whole.system_fingerprint is not None and whole.system_fingerprint == last.system_fingerprint


def test_without_include_usage_chunks_carry_no_usage_key() -> None:
    chat = assembler()
    raw = [json.loads(msgspec.json.encode(o)) for o in [*chat.opening(), *chat.feed(0, TokenDelta(1, "x", 1))]]
    assert all("usage" not in o for o in raw)


def test_a_tool_call_streams_the_way_openai_streams_it() -> None:
    chat = assembler(tools=True)
    pieces = [CALL[:5], CALL[5:30], CALL[30:52], CALL[52:]]
    events: list[tuple[int, TokenDelta | Finished]] = [(0, TokenDelta(i + 1, p, 1)) for i, p in enumerate(pieces)]
    chunks = stream(chat, [*events, (0, Finished(5, "stop", USAGE))])
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    first, rest = calls[0], calls[1:]
    assert first.id is not None and first.id.startswith("call_") and first.type == "function"
    assert first.function is not None and (first.function.name, first.function.arguments) == ("weather", "")
    assert all(c.id is None and c.type is None and c.function and c.function.name is None for c in rest)
    assert {c.index for c in calls} == {0}
    arguments = "".join(c.function.arguments or "" for c in rest if c.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert all(not c.choices[0].delta.content for c in chunks)  # the tags are not content
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    message = sdk(ChatCompletion, chat.completion()).choices[0]
    assert message.finish_reason == "tool_calls" and message.message.content is None
    (call,) = message.message.tool_calls or []
    assert call.id == first.id and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("weather", {"city": "Paris"})


def test_text_around_no_call_stays_content_when_tools_are_offered() -> None:
    chat = assembler(tools=True)
    chunks = stream(chat, [(0, TokenDelta(1, "It is sunny.", 3)), (0, Finished(2, "stop", USAGE))])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "It is sunny."
    whole = sdk(ChatCompletion, chat.completion()).choices[0]
    assert (whole.message.content, whole.message.tool_calls, whole.finish_reason) == ("It is sunny.", None, "stop")


def test_legacy_functions_get_function_call() -> None:
    chat = assembler(tools=True, functions=True)
    chunks = stream(chat, [(0, TokenDelta(1, CALL, 9)), (0, Finished(2, "stop", USAGE))])
    deltas = [c.choices[0].delta.function_call for c in chunks if c.choices[0].delta.function_call]
    assert deltas[0].name == "weather" and json.loads("".join(d.arguments or "" for d in deltas)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "function_call"
    whole = sdk(ChatCompletion, chat.completion()).choices[0]
    assert whole.message.tool_calls is None and whole.message.function_call is not None
    assert whole.message.function_call.name == "weather" and whole.finish_reason == "function_call"


def test_logprobs_ride_with_their_text() -> None:
    chat = assembler(logprobs=True)
    first = TokenLogprob(b"Hel", -0.25, ((b"Hel", -0.25), (b"Hi", -1.5)))
    second = TokenLogprob(b"lo", -0.5, ((b"lo", -0.5), (b"p", -2.0)))
    events: list[tuple[int, TokenDelta | Finished]] = [
        (0, TokenDelta(1, "Hel", 1, logprobs=(first,))),
        (0, TokenDelta(2, "lo", 1, logprobs=(second,))),
        (0, Finished(3, "length", USAGE)),
    ]
    chunks = stream(chat, events)
    rows = [row for c in chunks if c.choices[0].logprobs for row in c.choices[0].logprobs.content or []]
    assert [(r.token, r.logprob, r.bytes) for r in rows] == [("Hel", -0.25, [72, 101, 108]), ("lo", -0.5, [108, 111])]
    assert [(t.token, t.logprob) for t in rows[0].top_logprobs] == [("Hel", -0.25), ("Hi", -1.5)]
    whole = sdk(ChatCompletion, chat.completion()).choices[0]
    assert whole.logprobs is not None and [r.token for r in whole.logprobs.content or []] == ["Hel", "lo"]
    assert whole.finish_reason == "length"


def test_n_choices_count_the_prompt_once() -> None:
    chat = assembler(n=2, include_usage=True)
    events: list[tuple[int, TokenDelta | Finished]] = [
        (0, TokenDelta(1, "a", 1, 0)),
        (1, TokenDelta(2, "b", 1, 1)),
        (1, Finished(3, "stop", Usage(7, 1))),
        (0, Finished(4, "length", Usage(7, 2))),
    ]
    chunks = stream(chat, events)
    assert [c.choices[0].index for c in chunks[:2]] == [0, 1]  # each choice opens with the role
    usage = sdk(ChatCompletionChunk, chat.usage_chunk()).usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 3, 10)
    whole = sdk(ChatCompletion, chat.completion())
    assert [(c.index, c.message.content, c.finish_reason) for c in whole.choices] == [
        (0, "a", "length"),
        (1, "b", "stop"),
    ]


def test_the_fingerprint_reads_herds_version_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # importlib.metadata scans every installed distribution (~1.7 ms): once, not for every reply.
    from herd.api.translate import openai_replies

    reads: list[str] = []
    real = openai_replies.metadata.version

    def version(name: str) -> str:
        reads.append(name)
        return real(name)

    monkeypatch.setattr(openai_replies.metadata, "version", version)
    openai_replies._herd_version.cache_clear()
    prints = {assembler().opening()[0].system_fingerprint for _ in range(3)}
    prints.add(ChatAssembler("r2", "other:1b", 1_700_000_000, 1, False, False, False).opening()[0].system_fingerprint)
    assert reads == ["herd"]
    assert len(prints) == 2  # still one per model
    openai_replies._herd_version.cache_clear()
