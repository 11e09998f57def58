"""The clients that call /v1/responses by default, unmodified, against a running herd: the OpenAI Agents SDK,
LangChain's ChatOpenAI with the Responses API, the Batch API with endpoint /v1/responses, and (tests/node/responses.mjs)
the openai npm package and the Vercel AI SDK's default `@ai-sdk/openai` provider. Every Response and stream event they
receive is recorded at the HTTP transport and validated strictly against the `openai` SDK's own types."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import MODEL, HerdServer
from tests.test_pattern import ZOD

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
NODE_DIR = Path(__file__).parent / "node"


class Recorded:
    """What came back from /v1/responses, as bytes, by content type; `check` validates all of it strictly."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []

    def keep(self, request: httpx2.Request, response: httpx2.Response, body: bytes) -> None:
        if "/responses" in request.url.path and response.status_code == 200:
            self.bodies.append((response.headers.get("content-type", ""), body))

    def check(self) -> tuple[int, int]:
        """(responses, events) validated; a body that does not validate fails the test."""
        responses = events = 0
        for kind, body in self.bodies:
            if kind.startswith("text/event-stream"):
                for line in body.decode().splitlines():
                    if line.startswith("data: "):
                        EVENTS.validate_python(json.loads(line[6:]), strict=True)
                        events += 1
            else:
                Response.model_validate(json.loads(body), strict=True)
                responses += 1
        return responses, events


class _Tee(httpx2.SyncByteStream):
    def __init__(self, request: httpx2.Request, response: httpx2.Response, recorded: Recorded) -> None:
        self._request, self._response, self._recorded = request, response, recorded

    def __iter__(self) -> Iterator[bytes]:
        chunks = []
        for chunk in self._response.stream:  # type: ignore[union-attr]
            chunks.append(chunk)
            yield chunk
        self._recorded.keep(self._request, self._response, b"".join(chunks))

    def close(self) -> None:
        self._response.close()


class _AsyncTee(httpx2.AsyncByteStream):
    def __init__(self, request: httpx2.Request, response: httpx2.Response, recorded: Recorded) -> None:
        self._request, self._response, self._recorded = request, response, recorded

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = []
        async for chunk in self._response.stream:  # type: ignore[union-attr]
            chunks.append(chunk)
            yield chunk
        self._recorded.keep(self._request, self._response, b"".join(chunks))

    async def aclose(self) -> None:
        await self._response.aclose()


class RecordingTransport(httpx2.HTTPTransport):
    def __init__(self, recorded: Recorded) -> None:
        super().__init__()
        self.recorded = recorded

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        tee = _Tee(request, response, self.recorded)
        return httpx2.Response(response.status_code, headers=response.headers, stream=tee, request=request)


class AsyncRecordingTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, recorded: Recorded) -> None:
        super().__init__()
        self.recorded = recorded

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        tee = _AsyncTee(request, response, self.recorded)
        return httpx2.Response(response.status_code, headers=response.headers, stream=tee, request=request)


async def test_agents_sdk_run_with_a_function_tool(server: HerdServer) -> None:
    from agents import Agent, ModelSettings, Runner, function_tool, set_default_openai_client, set_tracing_disabled

    recorded = Recorded()
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"Sunny, 21 degrees Celsius in {city}."

    client = openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=AsyncRecordingTransport(recorded), timeout=300),
    )
    set_tracing_disabled(True)
    set_default_openai_client(client, use_for_tracing=False)
    agent = Agent(
        name="weather",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[get_weather],
        model=MODEL,
        # The first turn must call the tool; the SDK then resets tool_choice, so the next turn may answer.
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=48, temperature=0),
    )
    result = await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
    await client.close()
    assert len(asked) >= 1 and all(isinstance(city, str) and city for city in asked)
    assert isinstance(result.final_output, str) and result.final_output
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"
    responses, _ = recorded.check()
    assert responses == len(result.raw_responses) >= 2


def test_langchain_chat_openai_with_the_responses_api(server: HerdServer) -> None:
    from langchain_openai import ChatOpenAI

    recorded = Recorded()
    with httpx2.Client(transport=RecordingTransport(recorded), timeout=300) as http:
        chat = ChatOpenAI(
            model=MODEL,
            base_url=f"{server.base_url}/v1",
            api_key="x",  # type: ignore[arg-type]
            use_responses_api=True,
            temperature=0,
            max_tokens=16,  # type: ignore[call-arg]
            max_retries=0,
            http_client=http,  # the sync calls below
        )
        answer = chat.invoke("Name three colors.")
        chunks = list(chat.stream("Name three colors."))
    assert answer.text and answer.response_metadata["id"].startswith("resp_")
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    assert "".join(c.text for c in chunks) == answer.text  # greedy: the same words streamed
    responses, events = recorded.check()
    assert responses == 1 and events > 5


def test_batch_with_endpoint_responses(server: HerdServer) -> None:
    def line(custom_id: str, body: dict[str, Any]) -> bytes:
        row = {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": {"model": MODEL, **body}}
        return json.dumps(row).encode() + b"\n"

    code = {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}
    schema = {"type": "object", "properties": {"code": code}, "required": ["code"]}
    data = b"".join(
        [
            line("plain", {"input": "Name three colors.", "max_output_tokens": 8, "temperature": 0}),
            line(
                "items",
                {
                    "instructions": "Answer in one word.",
                    "input": [{"role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]}],
                    "max_output_tokens": 8,
                },
            ),
            line(
                "schema",
                {
                    "input": "A product code as JSON.",
                    "text": {
                        "format": {"type": "json_schema", "name": "code", "schema": {**schema, "required": ["code"]}}
                    },
                    "max_output_tokens": 40,
                },
            ),
            line("continued", {"input": "And then?", "previous_response_id": "resp_nope"}),
        ]
    )
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60) as sdk:
        source = sdk.files.create(file=("responses.jsonl", data), purpose="batch")
        batch = sdk.batches.create(input_file_id=source.id, endpoint="/v1/responses", completion_window="24h")
        deadline = time.monotonic() + 300
        while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
            time.sleep(0.5)
            batch = sdk.batches.retrieve(batch.id)
        assert batch.status == "completed", batch
        assert batch.output_file_id and batch.error_file_id
        rows = [json.loads(x) for x in sdk.files.content(batch.output_file_id).content.splitlines()]
        errors = [json.loads(x) for x in sdk.files.content(batch.error_file_id).content.splitlines()]
    out = {row["custom_id"]: Response.model_validate(row["response"]["body"], strict=True) for row in rows}
    assert sorted(out) == ["items", "plain", "schema"]
    assert out["plain"].status == "incomplete" and out["plain"].output_text
    assert out["items"].output_text and out["items"].instructions == "Answer in one word."
    assert out["schema"].status == "completed"
    code = json.loads(out["schema"].output_text)["code"]
    assert len(code) == 7 and code[:3].isupper() and code[3] == "-" and code[4:].isdigit()
    [error] = errors
    assert error["custom_id"] == "continued" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "previous_response_id"


@pytest.fixture(scope="module")
def node_clients() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the JavaScript client tests (Debian: apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "@ai-sdk" / "openai").is_dir():
        # The lock file pins every package by integrity hash and carries no registry address (see test_node_clients).
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=300
        )
    return NODE_DIR


def test_openai_npm_and_the_ai_sdks_default_openai_provider(server: HerdServer, node_clients: Path) -> None:
    run = subprocess.run(
        ["node", "responses.mjs", server.base_url, MODEL], cwd=node_clients, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    check_node_clients(json.loads(run.stdout))


def check_node_clients(seen: dict[str, Any]) -> None:
    # Every body and event the JavaScript clients got, in the openai Python SDK's strict types.
    recorded = Recorded()
    for exchange in seen["exchanges"]:
        assert exchange["status"] == 200, exchange
        recorded.bodies.append((exchange["type"], exchange["body"].encode()))
    responses, events = recorded.check()
    assert (responses, len(seen["exchanges"])) == (7, 9) and events > 10
    for exchange in seen["exchanges"]:
        if exchange["type"].startswith("text/event-stream"):
            numbers = [json.loads(x[6:])["sequence_number"] for x in exchange["body"].splitlines() if x[:6] == "data: "]
            assert numbers == list(range(len(numbers)))

    # openai npm: create and stream agree; the stream is OpenAI's event sequence.
    expected = seen["openaiCreate"]["text"]
    assert expected and seen["openaiCreate"]["id"].startswith("resp_")
    kinds = seen["openaiStream"]["kinds"]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert seen["openaiStream"]["deltas"] == seen["openaiStream"]["text"] == expected

    # @ai-sdk/openai's default model (the Responses API): the same greedy text, streamed or not.
    assert seen["aiGenerate"]["text"] == seen["aiStream"]["text"] == expected
    assert seen["aiGenerate"]["finishReason"] == seen["aiStream"]["finishReason"] == "stop"
    usage = seen["aiGenerate"]["usage"]
    assert (usage["inputTokens"], usage["outputTokens"]) == (
        seen["openaiCreate"]["usage"]["input_tokens"],
        seen["openaiCreate"]["usage"]["output_tokens"],
    )

    # Store on: the second turn referred to the first answer by item id, and herd rebuilt it from storage.
    requests = [json.loads(x["request"]) for x in seen["exchanges"] if x["request"]]
    items = [item for r in requests if isinstance(r["input"], list) for item in r["input"]]
    [second] = [r for r in requests if "What is my name?" in json.dumps(r)]
    [reference] = [item for item in second["input"] if item.get("type") == "item_reference"]
    [first_turn] = [x for x in seen["exchanges"] if "Ada" in (x["request"] or "") and "my name?" not in x["request"]]
    first_answer = Response.model_validate_json(first_turn["body"])
    assert reference["id"] == first_answer.output[0].id
    assert seen["aiTurns"]["first"] and seen["aiTurns"]["second"]

    # Tool round trip: a call to `weather`, its output sent back as function_call_output, then a text answer.
    first_step, second_step = seen["aiTools"]["steps"]
    assert first_step["finishReason"] == "tool-calls" and second_step["finishReason"] == "stop"
    [call] = first_step["toolCalls"]
    assert call["name"] == "weather" and isinstance(call["input"]["city"], str)
    assert first_step["toolResults"] == [{"city": call["input"]["city"], "temperature": 21, "sky": "clear"}]
    assert any(item.get("type") == "function_call_output" for item in items)

    # Structured output: zod's patterns went out in the schema and the object matches them.
    [structured] = [r for r in requests if "text" in r]
    sent = structured["text"]["format"]["schema"]["properties"]
    assert sent["email"]["pattern"] and sent["id"]["pattern"] and sent["code"]["pattern"]
    contact = seen["aiObject"]["object"]
    assert seen["aiObject"]["finishReason"] == "stop"
    assert re.fullmatch(ZOD["email"][0], contact["email"]) and len(contact["email"]) <= 40
    assert re.fullmatch(ZOD["uuid"][0], contact["id"])
    assert re.fullmatch(r"[A-Z]{3}-\d{3}", contact["code"])
