"""UIStream (api/translate/ui_messages.py) in process: reasoning, then the answer, as UI chunks, however split; tool
calls in non-JSON syntaxes typed by the offered tools' schemas, in the POST's stream and in a resumed replay."""

from __future__ import annotations

import json
import secrets

import msgspec
import pytest
from herd import channels
from herd.api.responses.ui_chats import Answer, ChatStreams
from herd.api.translate.ui_messages import UIStream
from herd.api.wire import ui as wire
from herd.config import Settings
from herd.inference import Finished, TokenDelta, Usage
from herd.toolparams import signatures
from redis.asyncio import Redis

TEXT = "<think>\nThe user greets me. </think>\n\nHello there!"


def _chunks(pieces: list[str], reasoning: str | None = "think") -> list[dict[str, object]]:
    answer = UIStream("msg-1", "m", tools=False)
    out = answer.opening()
    for seq, piece in enumerate(pieces):
        out += answer.feed(TokenDelta(seq, piece, 1, reasoning=reasoning if seq == 0 else None))
    out += answer.finish(Finished(len(pieces), "stop", Usage(5, len(pieces))))
    return [msgspec.to_builtins(c) for c in out]


@pytest.mark.parametrize("size", [1, 3, len(TEXT)])
def test_reasoning_block_closes_before_the_answer_opens(size: int) -> None:
    chunks = _chunks([TEXT[i : i + size] for i in range(0, len(TEXT), size)])
    kinds = [c["type"] for c in chunks if not str(c["type"]).endswith("delta")]
    assert kinds == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-end",
        "text-start",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert chunks[2] == {"type": "reasoning-start", "id": "reasoning-1"}
    reasoning = "".join(str(c["delta"]) for c in chunks if c["type"] == "reasoning-delta")
    text = "".join(str(c["delta"]) for c in chunks if c["type"] == "text-delta")
    assert (reasoning, text) == ("The user greets me.", "Hello there!")
    assert {c["id"] for c in chunks if str(c["type"]).startswith("text-")} == {"text-1"}


def test_a_model_that_does_not_reason_gives_text_only() -> None:
    chunks = _chunks(["<think>x</think> y"], reasoning=None)
    assert not [c for c in chunks if str(c["type"]).startswith("reasoning")]
    assert "".join(str(c["delta"]) for c in chunks if c["type"] == "text-delta") == "<think>x</think> y"


def test_a_failure_mid_reasoning_closes_its_block() -> None:
    answer = UIStream("msg-1", "m", tools=False)
    answer.feed(TokenDelta(0, "<think>hmm", 1, reasoning="think"))
    assert answer.failed("boom") == [wire.ReasoningEnd("reasoning-1"), wire.Error("boom"), wire.Finish("error")]


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
CALL = "<tool_call>\n<function=get_forecast>\n<parameter=city>\n2\n</parameter>\n<parameter=days>\n2\n</parameter>\n"
CALL += "</function>\n</tool_call>"


def _inputs(answer: UIStream) -> list[object]:
    chunks = answer.feed(TokenDelta(0, CALL, 1, tool_format="qwen3-coder"))
    chunks += answer.finish(Finished(1, "stop", Usage(5, 1)))
    return [c.input for c in chunks if isinstance(c, wire.ToolInputAvailable)]


def test_xml_tool_values_are_typed_by_the_offered_tools_schemas() -> None:
    typed = UIStream("msg-1", "m", tools=True, signatures=signatures([("get_forecast", SCHEMA)]))
    assert _inputs(typed) == [{"city": "2", "days": 2}]  # the string parameter stays text
    assert _inputs(UIStream("msg-1", "m", tools=True)) == [{"city": 2, "days": 2}]  # untyped: as JSON reads it


async def test_a_resumed_replay_types_values_as_the_post_did(redis_port: int) -> None:
    redis = Redis(host="127.0.0.1", port=redis_port, db=12)
    chats = ChatStreams(redis, Settings())
    owner, chat = f"owner-{secrets.token_hex(4)}", "chat-1"
    try:
        record = Answer("req-1", "msg-1", "m", True, (("get_forecast", json.dumps(SCHEMA)),))
        await chats.begin(owner, chat, record)
        found = await chats.active(owner, chat)
        assert found == record
        assert _inputs(UIStream(found.message_id, found.model, found.tools, found.signatures())) == [
            {"city": "2", "days": 2}
        ]
        await redis.hdel(channels.ui_chat(owner, chat), "schemas")  # a record written before schemas were kept
        older = await chats.active(owner, chat)
        assert older is not None and older.schemas == () and older.tools
    finally:
        await chats.end(owner, chat, "req-1")
        await redis.aclose()
