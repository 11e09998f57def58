"""The official `ollama` Python client (and raw httpx for the wire details) against a real `herd serve`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import llama_cpp
import ollama
import pytest

from tests.conftest import MODEL, HerdServer

MESSAGES = [{"role": "user", "content": "Name three colors."}]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(server: HerdServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def vocab(model_path: str) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)


def ndjson_lines(server: HerdServer, path: str, body: dict[str, object]) -> tuple[httpx.Response, list[bytes]]:
    with httpx.stream("POST", f"{server.base_url}{path}", json=body, timeout=120) as resp:
        raw = resp.read()
    assert raw.endswith(b"\n")
    return resp, raw.split(b"\n")[:-1]


# ---- model information ---------------------------------------------------------------------------------------


def test_list(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert MODEL in models
    entry = models[MODEL]
    assert entry.size and entry.size > 50_000_000  # the bundled GGUF is 92 MiB
    assert isinstance(entry.modified_at, datetime)
    assert entry.details is not None
    assert (entry.details.format, entry.details.family, entry.details.quantization_level) == ("gguf", "llama", "Q4_1")
    assert entry.details.parameter_size == "134.52M"


def test_show(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.modelinfo["general.parameter_count"] == 134_515_008
    assert shown.modelinfo["tokenizer.ggml.tokens"] == []  # long arrays only with verbose, as in Ollama
    assert "<|im_start|>" in (shown.template or "")  # the GGUF's own chat template
    assert shown.details is not None and shown.details.family == "llama"


def test_show_verbose_includes_the_vocabulary(server: HerdServer) -> None:
    resp = httpx.post(f"{server.base_url}/api/show", json={"model": MODEL, "verbose": True}, timeout=30)
    assert resp.status_code == 200
    assert len(resp.json()["model_info"]["tokenizer.ggml.tokens"]) == 49152


def test_show_accepts_the_old_name_field_and_latest_tag(server: HerdServer) -> None:
    resp = httpx.post(f"{server.base_url}/api/show", json={"name": MODEL}, timeout=30)
    assert resp.status_code == 200
    assert resp.json()["capabilities"] == ["completion"]


def test_ps(client: ollama.Client) -> None:
    running = {m.model: m for m in client.ps().models}
    assert MODEL in running
    entry = running[MODEL]
    assert entry.context_length == 2048
    assert entry.expires_at is not None and entry.expires_at.year == 9999
    assert entry.details is not None and entry.details.format == "gguf"


def test_version_and_root(server: HerdServer) -> None:
    version = httpx.get(f"{server.base_url}/api/version", timeout=10)
    assert version.status_code == 200
    assert [int(part) for part in version.json()["version"].split(".")] >= [0, 1, 0]
    root = httpx.get(f"{server.base_url}/", timeout=10)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"].startswith("text/plain")
    head = httpx.head(f"{server.base_url}/", timeout=10)
    assert head.status_code == 200 and head.content == b""


# ---- generation ----------------------------------------------------------------------------------------------


def test_chat_stream_matches_non_stream(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 20}
    whole = client.chat(model=MODEL, messages=MESSAGES, options=options)
    assert whole.done and whole.message.role == "assistant" and whole.message.content
    parts = list(client.chat(model=MODEL, messages=MESSAGES, options=options, stream=True))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert all(p.message.role == "assistant" for p in parts)
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    last = parts[-1]
    assert last.done_reason == whole.done_reason
    assert (last.prompt_eval_count, last.eval_count) == (whole.prompt_eval_count, whole.eval_count)


def test_generate_stream_matches_non_stream(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 20}
    whole = client.generate(model=MODEL, prompt="Name three colors.", options=options)
    assert whole.done and whole.response
    parts = list(client.generate(model=MODEL, prompt="Name three colors.", options=options, stream=True))
    assert "".join(p.response or "" for p in parts) == whole.response
    assert parts[-1].done and parts[-1].context == whole.context
    # context: the prompt's tokens and the reply's, to send back for the next turn
    assert whole.context is not None and whole.prompt_eval_count is not None and whole.eval_count is not None
    assert len(whole.context) == whole.prompt_eval_count + whole.eval_count


def test_generate_applies_the_chat_template_to_system_and_prompt(client: ollama.Client) -> None:
    system, prompt = "You answer in one word.", "What color is the sky?"
    options = {**GREEDY, "num_predict": 12}
    generated = client.generate(model=MODEL, prompt=prompt, system=system, options=options)
    chatted = client.chat(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        options=options,
    )
    assert generated.response == chatted.message.content
    assert generated.prompt_eval_count == chatted.prompt_eval_count


def test_generate_raw_sends_the_prompt_as_is(server: HerdServer, client: ollama.Client, vocab: llama_cpp.Llama) -> None:
    prompt = "1, 2, 3, 4,"
    # Pure greedy (no repeat penalty), so /v1/completions with temperature 0 must give the very same text.
    raw = client.generate(
        model=MODEL, prompt=prompt, raw=True, options={**GREEDY, "repeat_penalty": 1.0, "num_predict": 8}
    )
    assert raw.prompt_eval_count == len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))
    assert raw.context in (None, [])  # as Ollama: no context in raw mode
    openai_style = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0},
        timeout=60,
    ).json()
    assert raw.response == openai_style["choices"][0]["text"]


def test_generate_context_round_trip(client: ollama.Client) -> None:
    first = client.generate(model=MODEL, prompt="My name is Ada.", options={**GREEDY, "num_predict": 10})
    assert first.context
    second = client.generate(
        model=MODEL, prompt="What is my name?", context=first.context, options={**GREEDY, "num_predict": 5}
    )
    alone = client.generate(model=MODEL, prompt="What is my name?", options={**GREEDY, "num_predict": 5})
    assert second.prompt_eval_count is not None and alone.prompt_eval_count is not None
    # The earlier exchange's tokens come first, then the new turn (which adds no second BOS).
    assert second.prompt_eval_count == len(first.context) + alone.prompt_eval_count
    assert second.context is not None and list(second.context[: len(first.context)]) == list(first.context)


def test_generate_placeholder_template(client: ollama.Client, vocab: llama_cpp.Llama) -> None:
    template = "{{ .System }}Count on: {{ .Prompt }}{{ .Response }}<end>"
    resp = client.generate(
        model=MODEL, prompt="1, 2, 3,", system="Numbers. ", template=template, options={**GREEDY, "num_predict": 4}
    )
    expected = len(vocab.tokenize(b"Numbers. Count on: 1, 2, 3,", add_bos=True, special=True))
    assert resp.prompt_eval_count == expected


def test_num_predict_is_honoured(client: ollama.Client) -> None:
    resp = client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 5, "seed": 7})
    assert (resp.eval_count, resp.done_reason) == (5, "length")
    resp = client.generate(model=MODEL, prompt="Tell me a long story.", options={"num_predict": 3})
    assert (resp.eval_count, resp.done_reason) == (3, "length")


def test_stop_is_honoured(client: ollama.Client) -> None:
    options: dict[str, object] = {**GREEDY, "repeat_penalty": 1.0, "num_predict": 16}
    free = client.generate(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", raw=True, options=options).response
    assert " 8" in free, free
    cut = client.generate(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", raw=True, options={**options, "stop": [" 8"]})
    assert cut.response == free[: free.index(" 8")]
    assert cut.done_reason == "stop"


def test_durations_are_positive_nanoseconds(client: ollama.Client) -> None:
    resp = client.generate(model=MODEL, prompt="Say hello.", options={"num_predict": 4})
    for field in ("total_duration", "prompt_eval_duration", "eval_duration", "prompt_eval_count", "eval_count"):
        value = getattr(resp, field)
        assert isinstance(value, int) and value > 0, (field, value)
    assert isinstance(resp.load_duration, int) and resp.load_duration >= 0
    assert resp.total_duration >= resp.prompt_eval_duration + resp.eval_duration  # type: ignore[operator]
    assert resp.created_at and datetime.fromisoformat(resp.created_at.replace("Z", "+00:00"))


def test_unknown_options_are_ignored(client: ollama.Client) -> None:
    resp = client.generate(
        model=MODEL, prompt="Hi", options={"num_predict": 2, "mirostat": 2, "num_ctx": 4096, "typical_p": 0.5}
    )
    assert resp.done and resp.eval_count


def test_empty_prompt_loads_the_model(client: ollama.Client) -> None:
    generated = client.generate(model=MODEL, prompt="")
    assert (generated.done, generated.done_reason, generated.response) == (True, "load", "")
    chatted = client.chat(model=MODEL, messages=[])
    assert (chatted.done, chatted.done_reason, chatted.message.role) == (True, "load", "assistant")


# ---- wire details and errors ---------------------------------------------------------------------------------


def test_ndjson_has_no_blank_lines(server: HerdServer) -> None:
    for path, body in (
        ("/api/chat", {"model": MODEL, "messages": MESSAGES, "options": {"num_predict": 6}}),
        ("/api/generate", {"model": MODEL, "prompt": "Hello", "options": {"num_predict": 6}}),
    ):
        resp, lines = ndjson_lines(server, path, body)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/x-ndjson"
        assert all(line.strip() for line in lines), lines
        objects = [json.loads(line) for line in lines]
        assert [o["done"] for o in objects] == [False] * (len(objects) - 1) + [True]
        assert all(isinstance(o["created_at"], str) and o["model"] == MODEL for o in objects)
        if path == "/api/generate":
            assert all(isinstance(o["context"], list) for o in objects)  # the AI SDK provider wants it on every line


def test_stream_false_is_one_json_object(server: HerdServer) -> None:
    resp = httpx.post(
        f"{server.base_url}/api/generate",
        json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}},
        timeout=60,
    )
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["done"] is True and body["done_reason"] in ("stop", "length") and "load_duration" in body


def test_unknown_model_is_404_with_ollamas_message(client: ollama.Client) -> None:
    message = "model 'no-such-model' not found, try pulling it first"
    for call in (
        lambda: client.chat(model="no-such-model", messages=MESSAGES),
        lambda: list(client.generate(model="no-such-model", prompt="hi", stream=True)),
        lambda: client.show("no-such-model"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert (info.value.status_code, info.value.error) == (404, message)


def test_bad_field_type_is_400(server: HerdServer, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=MODEL, messages=MESSAGES, options={"temperature": "hot"})
    assert info.value.status_code == 400
    assert "options.temperature" in info.value.error
    resp = httpx.post(
        f"{server.base_url}/api/generate",
        json={"model": MODEL, "prompt": "hi", "options": {"top_k": "many"}},
        timeout=10,
    )
    assert resp.status_code == 400
    assert list(resp.json()) == ["error"] and "options.top_k" in resp.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/generate", {"prompt": "hi"}, "model is required"),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "suffix": "end"}, "'suffix' is not supported"),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "template": "{{ if .System }}x{{ end }}"}, "template"),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "context": [10**9]}, "context"),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ("/api/chat", {"model": MODEL, "messages": MESSAGES, "format": "yaml"}, "invalid format"),
        (
            "/api/chat",
            {"model": MODEL, "messages": MESSAGES, "format": {"type": "string", "pattern": "(?<=a)b"}},
            "pattern",
        ),
        ("/api/chat", {"model": MODEL, "messages": MESSAGES, "think": True}, "does not support thinking"),
    ],
)
def test_refused_requests_are_400(server: HerdServer, path: str, body: dict[str, object], message: str) -> None:
    resp = httpx.post(f"{server.base_url}{path}", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    assert list(resp.json()) == ["error"] and message in resp.json()["error"]


def test_unknown_api_route_is_an_ollama_error(server: HerdServer) -> None:
    resp = httpx.get(f"{server.base_url}/api/no-such-route", timeout=10)
    assert resp.status_code == 404
    assert list(resp.json()) == ["error"]


# ---- overload and failures mid-stream, on a server with one slot and a queue bound of 1 -----------------------

LONG = {"model": MODEL, "prompt": "Count from one to one thousand:", "options": {"temperature": 0, "num_predict": 1500}}


@pytest.fixture(scope="module")
def tiny(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    srv = HerdServer(
        redis_port, db=13, log_path=tmp_path_factory.mktemp("tiny") / "serve.log", HERD_MAX_SEQS="1", HERD_QUEUE_MAX="1"
    )
    yield srv
    srv.stop()


def wait_idle(server: HerdServer, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while sum(w.slots_busy for w in server.workers()) or server.redis.zcard(f"herd:queue:{MODEL}"):
        assert time.monotonic() < deadline, "the server did not go idle"
        time.sleep(0.05)


async def test_queue_full_is_503_in_ollamas_shape(tiny: HerdServer) -> None:
    wait_idle(tiny)
    async with (
        httpx.AsyncClient(base_url=tiny.base_url, timeout=60) as http,
        ollama.AsyncClient(tiny.base_url) as oc,
        http.stream("POST", "/api/generate", json=LONG) as running,
    ):
        assert running.status_code == 200  # it holds the one slot, and its job counts against the queue bound
        over = await http.post("/api/generate", json=LONG)
        assert over.status_code == 503
        assert over.headers["retry-after"].isdigit()
        assert list(over.json()) == ["error"] and "queue" in over.json()["error"]
        with pytest.raises(ollama.ResponseError) as info:
            await oc.chat(model=MODEL, messages=MESSAGES)
        assert info.value.status_code == 503


def test_error_after_streaming_started_is_one_error_line(tiny: HerdServer) -> None:
    wait_idle(tiny)
    received = b""
    with httpx.stream("POST", f"{tiny.base_url}/api/generate", json=LONG, timeout=60) as resp:
        assert resp.status_code == 200
        killed = False
        for data in resp.iter_bytes():
            received += data
            if not killed and received.count(b"\n") >= 5:
                (worker,) = tiny.workers()
                os.kill(worker.pid, signal.SIGKILL)
                killed = True
    assert killed, "the stream ended before the kill"
    assert received.endswith(b"\n")
    lines = received.split(b"\n")[:-1]
    assert all(line.strip() for line in lines)
    *chunks, last = [json.loads(line) for line in lines]
    assert all(c["done"] is False for c in chunks)
    assert list(last) == ["error"] and "worker" in last["error"]
    tiny.wait_ready(timeout=60)  # the supervisor restarts the worker
