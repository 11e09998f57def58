"""The Responses API end to end: two `herd api` replicas and one `herd worker` on one Redis database, auth on with
two API keys, the `openai` SDK unmodified. Every Response and every streamed event is validated strictly against
the SDK's own generated types; background streams are resumed on the other replica, also after SIGKILL."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import pytest
import redis
from herd.config import bundled_model_path
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from tests.conftest import MODEL, free_port

N_CTX = 1024
MAX_BYTES = 64 * 1024

DB = 0  # the shared Redis's db 0 (test_redis_restart's db 0 is on a private redis-server)
ALICE, BOB = "sk-alice-responses", "sk-bob-responses"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
COUNT = "Count from 1 to 300, one number per line."  # long and deterministic under greedy decoding
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    }
]


def _key(name: str, secret: str) -> str:
    return f"{name}={hashlib.sha256(secret.encode()).hexdigest()}:inference,models:read"


class Fleet:
    """API replicas and a worker as separate processes, like pods of one install."""

    def __init__(self, redis_port: int, workdir: Path) -> None:
        self.redis = redis.Redis(host="127.0.0.1", port=redis_port, db=DB)
        self.redis.flushdb()
        self.workdir = workdir
        self.env = {
            **os.environ,
            "HERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/{DB}",
            "HERD_API_KEYS": ";".join([_key("alice", ALICE), _key("bob", BOB)]),
            "HERD_MODELS_DIR": str(workdir / "models"),
            "HERD_FILES_DIR": str(workdir / "files"),
            "HERD_MAX_SEQS": "4",
            "HERD_N_THREADS": "1",
            "HERD_RESPONSES_MAX_BYTES": str(
                MAX_BYTES
            ),  # the worker shares two cores with the API replicas and other test sessions
            # A small context keeps the truncation test's prefills short.
            "HERD_MODELS": f"{MODEL}={bundled_model_path()}?n_ctx={N_CTX}",
            "HERD_LOG_LEVEL": "info",
        }
        self.logs: list[IO[bytes]] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.clients: dict[tuple[str, str], openai.OpenAI] = {}
        self.killed: set[str] = set()
        self.start_api("api1")
        self.start_api("api2")
        self.start("worker", ["worker", "--model", MODEL])
        self.wait_ready()

    def start(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "herd", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def start_api(self, name: str) -> str:
        self.ports[name] = free_port()
        self.start(name, ["api", "--host", "127.0.0.1", "--port", str(self.ports[name])])
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.workdir.glob("*.log")))

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None and name not in self.killed:
                    raise RuntimeError(f"{name} exited early:\n{self.log_tail()}")
            live = [n for n in self.ports if n not in self.killed]
            with contextlib.suppress(httpx.HTTPError):
                if all(httpx.get(f"{self.url(n)}/readyz?workers=1", timeout=2).status_code == 200 for n in live):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the fleet was not ready in {timeout}s:\n{self.log_tail()}")

    def client(self, name: str = "api1", key: str = ALICE) -> openai.OpenAI:
        """One SDK client per replica and key, closed with the fleet."""
        if (name, key) not in self.clients:
            url = f"{self.url(name)}/v1"
            self.clients[name, key] = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
        return self.clients[name, key]

    def stop(self) -> None:
        for client in self.clients.values():
            client.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()
        self.redis.close()


@pytest.fixture(scope="module")
def fleet(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    group = Fleet(redis_port, tmp_path_factory.mktemp("responses"))
    yield group
    group.stop()


def strict(response: Response) -> Response:
    """The response as the SDK's generated model accepts it in strict mode (the wire JSON, not the parsed object)."""
    return Response.model_validate(response.model_dump(mode="json", by_alias=True, exclude_unset=True), strict=True)


def strict_event(event: Any) -> Any:
    return EVENTS.validate_python(event.model_dump(mode="json", by_alias=True, exclude_unset=True), strict=True)


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def wait_terminal(client: openai.OpenAI, response_id: str, within: float = 120) -> Response:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = client.responses.retrieve(response_id)
        if found.status not in ("queued", "in_progress"):
            return found
        time.sleep(0.2)
    raise AssertionError(f"{response_id} did not end in {within}s")


def test_create_with_string_input_item_list_and_instructions(fleet: Fleet) -> None:
    client = fleet.client()
    first = strict(client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=16, temperature=0))
    assert first.id.startswith("resp_") and first.object == "response" and first.model == MODEL
    assert first.status in ("completed", "incomplete") and first.output_text
    assert first.usage is not None and first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    assert first.usage.output_tokens_details.reasoning_tokens == 0

    items: Any = [
        {"role": "developer", "content": "Answer with one word."},
        {"role": "user", "content": [{"type": "input_text", "text": "Name a color."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Blue."}]},
        {"role": "user", "content": "Name another color."},
    ]
    second = strict(
        client.responses.create(
            model=MODEL, input=items, instructions="You are terse.", max_output_tokens=8, temperature=0
        )
    )
    assert second.instructions == "You are terse." and second.output_text
    assert second.max_output_tokens == 8 and second.temperature == 0
    # The instructions and every item reached the prompt: more prompt tokens than the four messages alone give.
    plain = client.responses.create(model=MODEL, input=items, max_output_tokens=8, temperature=0)
    assert second.usage is not None and plain.usage is not None
    assert second.usage.input_tokens > plain.usage.input_tokens


def test_logprobs_when_included(fleet: Fleet) -> None:
    response = strict(
        fleet.client().responses.create(
            model=MODEL,
            input="Say hello.",
            max_output_tokens=6,
            temperature=0,
            top_logprobs=2,
            include=["message.output_text.logprobs"],
            metadata={"case": "logprobs"},
        )
    )
    assert response.metadata == {"case": "logprobs"} and response.top_logprobs == 2
    (part,) = response.output[0].content  # type: ignore[union-attr]
    assert part.logprobs and "".join(lp.token for lp in part.logprobs) == part.text  # type: ignore[union-attr]
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in part.logprobs)  # type: ignore[union-attr]


def test_max_output_tokens_makes_an_incomplete_response(fleet: Fleet) -> None:
    response = strict(fleet.client().responses.create(model=MODEL, input=COUNT, max_output_tokens=5, temperature=0))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 5


def test_stream_events_in_order_contiguous_and_strictly_typed(fleet: Fleet) -> None:
    client = fleet.client()
    stream = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=12, temperature=0, stream=True)
    events = [strict_event(e) for e in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response
    assert text_of(events) == events[-4].text == final.output_text
    assert events[0].response.status == "in_progress" and final.usage.output_tokens > 0

    # On the wire: `event:` and `data:` lines, the event's type named in both.
    with httpx.stream(
        "POST",
        f"{fleet.url('api1')}/v1/responses",
        headers={"authorization": f"Bearer {ALICE}"},
        json={"model": MODEL, "input": "Hi", "max_output_tokens": 3, "stream": True},
        timeout=60,
    ) as raw:
        frames = [f for f in raw.read().decode().split("\n\n") if f.strip()]
    for frame in frames:
        head, data = frame.split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == head[7:]


def test_parse_with_a_json_schema_text_format(fleet: Fleet) -> None:
    class Person(BaseModel):
        name: str
        age: int

    parsed = fleet.client().responses.parse(
        model=MODEL, input="Ana is 31 years old. Extract the person.", text_format=Person, temperature=0
    )
    strict(parsed)
    assert isinstance(parsed.output_parsed, Person)
    assert parsed.text is not None and parsed.text.format is not None and parsed.text.format.type == "json_schema"


def test_function_tool_round_trip_with_previous_response_and_item_reference(fleet: Fleet) -> None:
    client = fleet.client()
    asked = strict(
        client.responses.create(
            model=MODEL, input="What is the weather in Paris?", tools=TOOLS, tool_choice="required", temperature=0
        )
    )
    (call,) = asked.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments)["city"]

    answered = strict(
        client.responses.create(
            model=MODEL,
            previous_response_id=asked.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
            tools=TOOLS,
            tool_choice="none",
            max_output_tokens=24,
            temperature=0,
        )
    )
    assert answered.previous_response_id == asked.id and answered.output[0].type == "message"
    assert answered.output_text

    # The AI SDK's way with store on: the earlier call by reference, its output inline, no previous_response_id.
    referenced = strict(
        client.responses.create(
            model=MODEL,
            input=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {"type": "item_reference", "id": call.id},
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
            ],
            tools=TOOLS,
            tool_choice="none",
            max_output_tokens=24,
            temperature=0,
        )
    )
    assert referenced.output_text == answered.output_text  # the same conversation, rebuilt two ways
    listed = [i.type for i in client.responses.input_items.list(referenced.id, order="asc")]
    assert listed == ["message", "function_call", "function_call_output"]

    # Streaming a call: arguments arrive as deltas and add up to the done event's.
    events = [
        strict_event(e)
        for e in client.responses.create(
            model=MODEL, input="Weather in Rome?", tools=TOOLS, tool_choice="required", temperature=0, stream=True
        )
    ]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert deltas == done.arguments and json.loads(deltas)["city"]


def test_retrieve_input_items_pagination_and_delete(fleet: Fleet) -> None:
    client = fleet.client()
    items: Any = [{"role": "user", "content": f"Item {i}."} for i in range(5)]
    made = client.responses.create(model=MODEL, input=items, max_output_tokens=4, temperature=0)
    again = strict(client.responses.retrieve(made.id))
    assert again.model_dump() == made.model_dump()

    page = client.responses.input_items.list(made.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["Item 0.", "Item 1."]  # type: ignore[union-attr]
    assert page.has_more and page.first_id == page.data[0].id and page.last_id == page.data[1].id
    rest = client.responses.input_items.list(made.id, order="asc", after=page.last_id, limit=10)
    assert [i.content[0].text for i in rest.data] == ["Item 2.", "Item 3.", "Item 4."]  # type: ignore[union-attr]
    assert not rest.has_more
    newest = client.responses.input_items.list(made.id, limit=1)  # desc by default, as OpenAI lists them
    assert newest.data[0].content[0].text == "Item 4."  # type: ignore[union-attr]
    everything = [i.id for i in client.responses.input_items.list(made.id, order="asc")]  # the SDK's auto-paging
    assert len(everything) == len(set(everything)) == 5

    assert client.responses.delete(made.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(made.id)


def test_store_false_keeps_nothing(fleet: Fleet) -> None:
    client = fleet.client()
    made = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    assert not fleet.redis.exists(f"herd:response:{made.id}")


def test_an_input_too_large_to_store_is_refused_before_it_runs(fleet: Fleet) -> None:
    client = fleet.client()
    big = "x" * (MAX_BYTES + 1)
    for background in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=MODEL, input=big, background=background)
        assert refused.value.body["param"] == "input"  # type: ignore[index]
        rid = refused.value.response.headers["x-request-id"]
        assert not fleet.redis.exists(f"herd:request:{rid}", f"herd:response:resp_{rid}")  # nothing queued or kept


def test_another_principal_gets_404(fleet: Fleet) -> None:
    alice, bob = fleet.client(), fleet.client("api2", BOB)
    made = alice.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    for call in (
        lambda: bob.responses.retrieve(made.id),
        lambda: bob.responses.delete(made.id),
        lambda: bob.responses.cancel(made.id),
        lambda: bob.responses.input_items.list(made.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as refused:
        bob.responses.create(model=MODEL, input="Hi", previous_response_id=made.id)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert alice.responses.retrieve(made.id).id == made.id  # still there for its owner
    no_key = httpx.get(f"{fleet.url('api1')}/v1/responses/{made.id}")
    assert no_key.status_code == 401


def test_follow_up_turn_hits_the_prefix_cache(fleet: Fleet) -> None:
    client = fleet.client()
    facts = (
        "Here are facts about my garden. I grow tomatoes, beans, peppers, carrots, onions, garlic, lettuce, "
        "spinach, kale and herbs such as basil, mint, parsley and thyme. The garden faces south. My name is Ana."
    )
    first = client.responses.create(
        model=MODEL, instructions="You are a gardener.", input=facts, max_output_tokens=16, temperature=0
    )
    second = strict(
        client.responses.create(
            model=MODEL,
            instructions="You are a gardener.",
            input="What is my name?",
            previous_response_id=first.id,
            max_output_tokens=16,
            temperature=0,
        )
    )
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn is in the prompt
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_background_poll_and_cancel(fleet: Fleet) -> None:
    client = fleet.client()
    queued = strict(client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=8, background=True))
    assert queued.status == "queued" and queued.background is True and queued.output == []
    done = strict(wait_terminal(client, queued.id))
    assert done.status in ("completed", "incomplete") and done.output_text and done.usage is not None

    long = client.responses.create(model=MODEL, input=COUNT, max_output_tokens=600, temperature=0, background=True)
    deadline = time.monotonic() + 60
    while client.responses.retrieve(long.id).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
    cancelled = strict(fleet.client("api2").responses.cancel(long.id))  # from the replica that does not run it
    assert cancelled.status == "cancelled"
    assert strict(client.responses.cancel(long.id)).status == "cancelled"  # idempotent
    # The worker dropped the sequence at its next step: its record says so, and the response stays cancelled.
    rid = long.id.removeprefix("resp_")
    deadline = time.monotonic() + 30
    while fleet.redis.get(f"herd:stats:{rid}") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = fleet.redis.get(f"herd:stats:{rid}")
    assert stats is not None, fleet.redis.xrange(f"herd:durable:{rid}")
    assert json.loads(stats)["finish_reason"] == "cancelled"
    assert json.loads(stats)["completion_tokens"] < 600
    assert client.responses.retrieve(long.id).status == "cancelled"

    plain = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)


def test_background_stream_resumed_on_the_other_replica(fleet: Fleet) -> None:
    client = fleet.client()
    reference = wait_terminal(
        client, client.responses.create(model=MODEL, input=COUNT, max_output_tokens=60, temperature=0).id
    )
    stream = client.responses.create(
        model=MODEL, input=COUNT, max_output_tokens=60, temperature=0, background=True, stream=True
    )
    head: list[Any] = []
    for event in stream:
        head.append(strict_event(event))
        if len(head) == 12:
            break
    stream.close()
    assert head[0].type == "response.created" and head[0].response.status == "queued"
    other = fleet.client("api2")
    tail = [
        strict_event(e)
        for e in other.responses.retrieve(head[0].response.id, stream=True, starting_after=head[-1].sequence_number)
    ]
    events = head + tail
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert text_of(events) == reference.output_text
    # A full replay from the start gives the same events again.
    replay = [strict_event(e) for e in other.responses.retrieve(head[0].response.id, stream=True)]
    assert [(e.type, e.sequence_number) for e in replay] == [(e.type, e.sequence_number) for e in events]
    # The SDK's own resume helper (its accumulator sees the whole replay, the caller only what came after).
    with other.responses.stream(response_id=head[0].response.id, starting_after=head[-1].sequence_number) as resumed:
        rest = [strict_event(e) for e in resumed]
    assert [e.sequence_number for e in rest] == [e.sequence_number for e in tail]
    assert text_of(head) + text_of(rest) == reference.output_text


def test_resume_after_sigkill_of_the_replica_that_ran_it(fleet: Fleet) -> None:
    client = fleet.client()
    reference = client.responses.create(model=MODEL, input=COUNT, max_output_tokens=120, temperature=0)
    doomed = fleet.start_api("api3")
    fleet.wait_ready()
    head: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{doomed}/v1/responses",
        headers={"authorization": f"Bearer {ALICE}"},
        json={
            "model": MODEL,
            "input": COUNT,
            "max_output_tokens": 120,
            "temperature": 0,
            "background": True,
            "stream": True,
        },
        timeout=60,
    ) as raw:
        for line in raw.iter_lines():
            if line.startswith("data: "):
                head.append(json.loads(line[6:]))
                if sum(e["type"] == "response.output_text.delta" for e in head) == 5:
                    fleet.killed.add("api3")
                    fleet.procs["api3"].send_signal(signal.SIGKILL)
                    fleet.procs["api3"].wait()
                    break
    response_id = head[0]["response"]["id"]
    other = fleet.client("api2")
    tail = [strict_event(e) for e in other.responses.retrieve(response_id, stream=True, starting_after=len(head) - 1)]
    for event in head:
        EVENTS.validate_python(event, strict=True)
    numbers = [e["sequence_number"] for e in head] + [e.sequence_number for e in tail]
    assert numbers == list(range(len(numbers)))
    text = "".join(e["delta"] for e in head if e["type"] == "response.output_text.delta") + text_of(tail)
    assert text == reference.output_text
    # The dead replica's lease ran out: a GET anywhere settles the record from the worker's events.
    settled = strict(wait_terminal(other, response_id))
    assert settled.status == reference.status and settled.output_text == reference.output_text


def test_truncation_disabled_refuses_an_overflow_and_auto_drops_the_oldest_items(fleet: Fleet) -> None:
    client = fleet.client()
    filler = " ".join(f"word{i}" for i in range(100))
    items: Any = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: {filler}"} for i in range(8)
    ] + [{"role": "user", "content": "Say OK."}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input=items, max_output_tokens=4)
    assert refused.value.body["param"] == "input"  # type: ignore[index]
    assert refused.value.code == "context_length_exceeded"
    fitted = strict(
        client.responses.create(
            model=MODEL, input=items, instructions="Be brief.", truncation="auto", max_output_tokens=4
        )
    )
    assert fitted.truncation == "auto" and fitted.status in ("completed", "incomplete") and fitted.usage is not None
    assert 0 < fitted.usage.input_tokens <= N_CTX - 4

    # In the background: the response was accepted before anything was tokenized, so an overflow fails it, or with
    # truncation auto it is queued again, shorter; a stream follows the try that fit, numbered without a gap.
    failed = wait_terminal(client, client.responses.create(model=MODEL, input=items, background=True).id)
    assert failed.status == "failed" and failed.error is not None and "context length" in failed.error.message
    events = [
        strict_event(e)
        for e in client.responses.create(
            model=MODEL, input=items, truncation="auto", max_output_tokens=4, background=True, stream=True
        )
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type in ("response.completed", "response.incomplete")
    again = [strict_event(e) for e in client.responses.retrieve(events[0].response.id, stream=True)]
    assert [(e.type, e.sequence_number) for e in again] == [(e.type, e.sequence_number) for e in events]
    assert 0 < events[-1].response.usage.input_tokens <= N_CTX - 4


def test_a_response_whose_api_replica_and_worker_both_died_ends_failed(fleet: Fleet) -> None:
    """Nobody is left to finish it: the next reader on a live replica settles it as failed instead of waiting."""
    fleet.start("worker2", ["worker", "--model", MODEL])
    doomed = fleet.start_api("api4")
    fleet.wait_ready()
    deadline = time.monotonic() + 120
    while len(list(fleet.redis.scan_iter("herd:worker:*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    client = openai.OpenAI(base_url=f"{doomed}/v1", api_key=ALICE, max_retries=0, timeout=60)
    with client:
        made = client.responses.create(model=MODEL, input=COUNT, max_output_tokens=900, temperature=0, background=True)
        rid = made.id.removeprefix("resp_")
        while fleet.redis.get(f"herd:started:{rid}") is None and time.monotonic() < deadline:
            time.sleep(0.05)
    worker_id = fleet.redis.get(f"herd:started:{rid}")
    assert worker_id is not None
    heartbeat = fleet.redis.get(f"herd:worker:{worker_id.decode()}")
    assert heartbeat is not None
    pid = json.loads(heartbeat)["pid"]
    (name,) = [n for n, p in fleet.procs.items() if p.pid == pid]
    for gone in ("api4", name):
        fleet.killed.add(gone)
        fleet.procs[gone].send_signal(signal.SIGKILL)
        fleet.procs[gone].wait()

    other = fleet.client("api2")
    events = [strict_event(e) for e in other.responses.retrieve(made.id, stream=True)]
    assert events[-1].type == "response.failed" and events[-1].response.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    settled = strict(other.responses.retrieve(made.id))
    assert settled.status == "failed" and settled.error is not None
    # The fleet still serves: the other worker takes the next request.
    assert other.responses.create(model=MODEL, input="Hi", max_output_tokens=2).status in ("completed", "incomplete")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"tools": [*TOOLS, {"type": "image_generation"}]}, "tools[1].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"input": [{"type": "item_reference", "id": "msg_unknown_o0"}]}, "input[0].id"),
        ({"input": []}, "input"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"background": True, "store": False}, "store"),
        ({"previous_response_id": "resp_nope"}, "previous_response_id"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_bad_requests_are_400_naming_the_field(fleet: Fleet, body: dict[str, Any], param: str) -> None:
    resp = httpx.post(
        f"{fleet.url('api1')}/v1/responses",
        headers={"authorization": f"Bearer {ALICE}"},
        json={"model": MODEL, "input": "hi", **body},
        timeout=30,
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_unknown_model_is_404(fleet: Fleet) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        fleet.client().responses.create(model="no-such-model", input="hi")
    assert missing.value.body["param"] == "model"  # type: ignore[index]
