"""/v1/ui/chat, the AI SDK's UI message stream protocol, driven by the AI SDK's own DefaultChatTransport in node
(tests/node/uichat.mjs): text, a follow-up turn, a stop that reaches the worker, a tool call and its result, errors;
a model that reasons (tests/node/uireasoning.mjs): reasoning parts, also when resumed through another API process."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from herd.inference import RequestStats

from tests.conftest import MODEL, HerdServer, api_replica
from tests.test_node_clients import node_clients  # noqa: F401 (the fixture: npm ci once)
from tests.thinker import THINKER, thinker_server


def _cancelled(server: HerdServer) -> list[RequestStats]:
    stats = [server.stats(key.decode().rpartition(":")[2]) for key in server.redis.scan_iter(match="herd:stats:*")]
    return [s for s in stats if s is not None and s.finish_reason == "cancelled"]


def test_default_chat_transport_streams_from_herd(server: HerdServer, node_clients: Path) -> None:  # noqa: F811
    before = {s.request_id for s in _cancelled(server)}
    run = subprocess.run(
        ["node", "uichat.mjs", server.base_url, MODEL], cwd=node_clients, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)

    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as sdk:
        python = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name three colors."}], max_tokens=16, temperature=0
        )
    text = seen["text"]
    assert text["types"][:3] == ["start", "start-step", "text-start"]
    assert text["types"][-3:] == ["text-end", "finish-step", "finish"] and "text-delta" in text["types"]
    [step, part] = text["message"]["parts"]
    assert step == {"type": "step-start"} and part["type"] == "text" and part["state"] == "done"
    assert part["text"] == python.choices[0].message.content  # the same generation path as /v1/chat/completions
    metadata = text["message"]["metadata"]
    assert python.usage is not None
    assert metadata["usage"] == {
        "inputTokens": python.usage.prompt_tokens,
        "outputTokens": python.usage.completion_tokens,
    }
    assert metadata["model"] == MODEL and metadata["tokensPerSecond"] > 0

    follow = seen["followUp"]["message"]
    assert follow["metadata"]["usage"]["inputTokens"] > metadata["usage"]["inputTokens"]  # the history went along

    # Stopped by the client after three deltas: the worker drops the sequence.
    assert seen["stopped"]["types"][-1] == "aborted:AbortError"
    deadline = time.monotonic() + 60
    while not [s for s in _cancelled(server) if s.request_id not in before]:
        assert time.monotonic() < deadline, "the worker never saw the cancel"
        time.sleep(0.2)

    tool = seen["tool"]
    assert tool["types"][2] == "tool-input-start" and "tool-input-delta" in tool["types"]
    assert tool["types"][-3:] == ["tool-input-available", "finish-step", "finish"]
    [_, call] = tool["message"]["parts"]
    assert call["type"] == "tool-get_weather" and call["state"] == "input-available"
    assert isinstance(call["input"]["city"], str) and call["toolCallId"].startswith("call_")
    after = seen["toolResult"]["message"]["parts"]
    assert after[-1]["type"] == "text" and after[-1]["text"]

    assert seen["notFound"]["thrown"] and "model_not_found" in seen["notFound"]["message"]


def test_headers_errors_and_reconnect(server: HerdServer) -> None:
    url = f"{server.base_url}/v1/ui/chat"
    body = {
        "model": MODEL,
        "maxTokens": 2,
        "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}],
    }
    with httpx.stream("POST", url, json=body, timeout=120) as reply:
        assert reply.status_code == 200
        assert reply.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert reply.headers["content-type"].startswith("text/event-stream")
        frames = [line for line in reply.iter_lines() if line]
    assert frames[-1] == "data: [DONE]"
    last = msgspec.json.decode(frames[-2].removeprefix("data: "))
    assert last["type"] == "finish" and last["finishReason"] == "length"

    missing = httpx.post(url, json={**body, "model": ""}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    bad = httpx.post(url, json={**body, "messages": [{"role": "user", "parts": [{"type": "file"}]}]}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].parts"
    assert httpx.get(f"{url}/chat-1/stream", timeout=30).status_code == 204


def _chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            yield msgspec.json.decode(line.removeprefix("data: "))


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["delta"] for c in chunks if c["type"] == "text-delta")


def test_a_dropped_answer_resumes_from_another_connection(server: HerdServer) -> None:
    url = f"{server.base_url}/v1/ui/chat"
    story = [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Write a long story about a dragon."}]}]
    body = {"model": MODEL, "id": "chat-resume", "resumable": True, "maxTokens": 200, "messages": story}
    with httpx.stream("POST", url, json=body, timeout=120) as reply:
        assert reply.status_code == 200
        seen: list[dict[str, Any]] = []
        for chunk in _chunks(reply.iter_lines()):
            seen.append(chunk)
            if sum(c["type"] == "text-delta" for c in seen) == 3:
                break  # the client goes away mid-answer (the connection closes here)
    assert seen[0]["type"] == "start"

    with httpx.stream("GET", f"{url}/chat-resume/stream", timeout=120) as again:
        assert again.status_code == 200 and again.headers["x-vercel-ai-ui-message-stream"] == "v1"
        lines = list(again.iter_lines())
    assert [line for line in lines if line][-1] == "data: [DONE]"
    replayed = list(_chunks(iter(lines)))
    assert replayed[0] == seen[0]  # the same answer: its message id
    assert replayed[-1]["type"] == "finish" and replayed[-1]["finishReason"] in ("stop", "length")
    assert _text(replayed).startswith(_text(seen)) and len(_text(replayed)) > len(_text(seen))
    assert replayed[-1]["messageMetadata"]["usage"]["outputTokens"] > 3  # it ran on after the drop
    # Read to its end: nothing is left to resume.
    assert httpx.get(f"{url}/chat-resume/stream", timeout=30).status_code == 204


def test_a_resumable_answer_stops_with_delete(server: HerdServer) -> None:
    url = f"{server.base_url}/v1/ui/chat"
    before = {s.request_id for s in _cancelled(server)}
    story = [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Write a very long story."}]}]
    body = {"model": MODEL, "id": "chat-stop", "resumable": True, "maxTokens": 1000, "messages": story}
    with httpx.stream("POST", url, json=body, timeout=120) as reply:
        deltas = 0
        for chunk in _chunks(reply.iter_lines()):
            deltas += chunk["type"] == "text-delta"
            if deltas == 3:
                break
    assert httpx.delete(f"{url}/chat-stop/stream", timeout=30).status_code == 204
    assert httpx.get(f"{url}/chat-stop/stream", timeout=30).status_code == 204
    deadline = time.monotonic() + 60
    while not [s for s in _cancelled(server) if s.request_id not in before]:
        assert time.monotonic() < deadline, "the worker never saw the stop"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def thinking(redis_port: int, model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    server = thinker_server(redis_port, 15, model_path, tmp_path_factory.mktemp("ui-reasoning"))
    yield server
    server.stop()


def test_reasoning_parts_also_when_resumed_through_another_api_process(
    thinking: HerdServer,
    node_clients: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    with api_replica(thinking, tmp_path / "replica.log") as other:
        run = subprocess.run(
            ["node", "uireasoning.mjs", thinking.base_url, other, THINKER],
            cwd=node_clients,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr
        seen = json.loads(run.stdout)
        # Read to its end on the other replica: neither has anything left to resume.
        for base in (thinking.base_url, other):
            assert httpx.get(f"{base}/v1/ui/chat/chat-think-resume/stream", timeout=30).status_code == 204

    # Every chunk passed the SDK's schema (DefaultChatTransport checks each); SmolLM2 never closes `<think>`, so the
    # whole answer is one reasoning block, and readUIMessageStream made it a reasoning part.
    answer = seen["answer"]
    assert answer["types"][:3] == ["start", "start-step", "reasoning-start"] and "reasoning-delta" in answer["types"]
    assert answer["types"][-3:] == ["reasoning-end", "finish-step", "finish"] and "text-start" not in answer["types"]
    [step, part] = answer["message"]["parts"]
    assert step == {"type": "step-start"} and part["type"] == "reasoning" and part["state"] == "done"
    with openai.OpenAI(base_url=f"{thinking.base_url}/v1", api_key="x", max_retries=0) as sdk:
        chat = sdk.chat.completions.create(
            model=THINKER,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12,
            temperature=0,
        )
    thought = (chat.choices[0].message.model_extra or {}).get("reasoning_content")
    assert part["text"] == thought and "<think>" not in part["text"]  # the same split as /v1/chat/completions

    dropped, resumed = seen["dropped"], seen["resumed"]
    assert dropped["types"].count("reasoning-delta") == 3 and "finish" not in dropped["types"]
    assert resumed is not None, "the other replica had no answer to resume"
    assert resumed["types"][:3] == ["start", "start-step", "reasoning-start"]
    assert resumed["types"][-3:] == ["reasoning-end", "finish-step", "finish"]
    assert resumed["message"]["id"] == dropped["message"]["id"]  # the same answer, replayed from its first chunk
    [_, before] = dropped["message"]["parts"]
    [_, after] = resumed["message"]["parts"]
    assert after["type"] == "reasoning" and after["state"] == "done"
    assert after["text"].startswith(before["text"]) and len(after["text"]) > len(before["text"])
    assert resumed["message"]["metadata"]["usage"]["outputTokens"] > 3  # it ran on after the client went away
