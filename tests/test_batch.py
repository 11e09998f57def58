"""The Files and Batch APIs with the real openai SDK against a real `herd serve`: results, bad input, cancel,
a worker SIGKILLed mid-batch, and an API restart mid-batch."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator

import openai
import pytest
import redis
from openai.types import Batch

from tests.conftest import MODEL, HerdServer

FINAL = {"completed", "failed", "cancelled", "expired"}
# Two callers (API keys, so auth is on): what alice creates, bob must not see.
ALICE, BOB = "sk-alice-batch-test", "sk-bob-batch-test"
KEYS = {"alice": (ALICE, "batch,inference"), "bob": (BOB, "batch,inference")}


@pytest.fixture(scope="module")
def herd(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    files = tmp_path_factory.mktemp("files")
    keys = ";".join(f"{n}={hashlib.sha256(k.encode()).hexdigest()}:{sc}" for n, (k, sc) in KEYS.items())
    srv = HerdServer(
        redis_port,
        db=4,
        log_path=tmp_path_factory.mktemp("batch") / "serve.log",
        HERD_FILES_DIR=str(files),
        HERD_API_KEYS=keys,
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(herd: HerdServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{herd.base_url}/v1", api_key=ALICE, timeout=120, max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def bob(herd: HerdServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{herd.base_url}/v1", api_key=BOB, timeout=120, max_retries=0) as c:
        yield c


def chat_line(custom_id: str, question: str, max_tokens: int = 8) -> dict[str, object]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {**body, "temperature": 0}}


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def wait_until(client: openai.OpenAI, batch_id: str, done: object, within: float = 600) -> Batch:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if done(batch):  # type: ignore[operator]
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not get there in {within}s: {client.batches.retrieve(batch_id)}")


def results(client: openai.OpenAI, file_id: str | None) -> list[dict[str, object]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


def test_files_upload_list_content_delete(client: openai.OpenAI) -> None:
    data = jsonl([chat_line("a", "hi")]) * 3
    uploaded = client.files.create(file=("input.jsonl", data), purpose="batch")
    assert (uploaded.object, uploaded.bytes, uploaded.filename, uploaded.purpose) == (
        "file",
        len(data),
        "input.jsonl",
        "batch",
    )
    assert uploaded.id.startswith("file-")
    assert client.files.retrieve(uploaded.id) == uploaded
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
    assert uploaded.id not in [f.id for f in client.files.list(purpose="user_data")]
    assert client.files.content(uploaded.id).content == data
    deleted = client.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]


def test_upload_beyond_litestars_default_body_limit(client: openai.OpenAI) -> None:
    big = (b'{"custom_id": "pad", "padding": "' + b"x" * 1000 + b'"}\n') * 12_000  # about 12 MB
    uploaded = client.files.create(file=("big.jsonl", big), purpose="batch")
    assert uploaded.bytes == len(big)
    assert client.files.content(uploaded.id).content == big
    client.files.delete(uploaded.id)


def test_chat_batch_every_line_once_with_an_answer_and_idempotent_create(client: openai.OpenAI) -> None:
    rows = [chat_line(f"q{i}", f"What is {i} plus {i}?") for i in range(6)]
    bad_body = {"model": MODEL, "messages": []}  # valid line, invalid request: its own 400 in the error file
    rows.append({"custom_id": "empty", "method": "POST", "url": "/v1/chat/completions", "body": bad_body})
    source = client.files.create(file=("chat.jsonl", jsonl(rows)), purpose="batch")
    key = {"Idempotency-Key": f"test-{source.id}"}
    first = client.batches.create(
        input_file_id=source.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "chat"},
        extra_headers=key,
    )
    retried = client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=key
    )
    assert retried.id == first.id  # an SDK retry of the same create is the same batch
    assert first.status == "validating" and first.metadata == {"run": "chat"}
    assert first.expires_at == first.created_at + 24 * 3600
    batch = wait_until(client, first.id, lambda b: b.status in FINAL)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 6, 1)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.model == MODEL
    outputs = results(client, batch.output_file_id)
    assert sorted(str(o["custom_id"]) for o in outputs) == sorted(f"q{i}" for i in range(6))
    for out in outputs:
        response = out["response"]
        assert isinstance(response, dict) and response["status_code"] == 200 and out["error"] is None
        assert str(out["id"]).startswith("batch_req_") and response["request_id"]
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["choices"][0]["message"]["content"].strip()
        assert 0 < body["usage"]["completion_tokens"] <= 8
    (error,) = results(client, batch.error_file_id)
    assert error["custom_id"] == "empty"
    assert error["response"]["status_code"] == 400  # type: ignore[index]
    assert "messages" in error["response"]["body"]["error"]["message"]  # type: ignore[index]
    listed = client.batches.list(limit=100)
    assert first.id in [b.id for b in listed.data]
    assert sum(b.id == first.id for b in listed.data) == 1  # the retried create made no second batch
    output_file = client.files.retrieve(str(batch.output_file_id))
    assert output_file.purpose == "batch_output"


def test_embeddings_batch(client: openai.OpenAI) -> None:
    texts = ["a cat", "a dog", "the stock market", "quantum physics"]
    rows = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": t}}
        for i, t in enumerate(texts)
    ]
    source = client.files.create(file=("emb.jsonl", jsonl(rows)), purpose="batch")
    created = client.batches.create(input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h")
    batch = wait_until(client, created.id, lambda b: b.status in FINAL)
    assert batch.status == "completed" and batch.error_file_id is None, batch
    outputs = {str(o["custom_id"]): o for o in results(client, batch.output_file_id)}
    assert sorted(outputs) == [f"e{i}" for i in range(4)]
    vectors = [outputs[f"e{i}"]["response"]["body"]["data"][0]["embedding"] for i in range(4)]  # type: ignore[index]
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 16
    norm = sum(x * x for x in vectors[0]) ** 0.5
    assert abs(norm - 1) < 1e-3  # a real, normalised embedding
    assert vectors[0] != vectors[1]


def test_bad_lines_fail_validation_with_their_line_numbers(client: openai.OpenAI) -> None:
    lines = [
        json.dumps(chat_line("ok", "hi")),  # 1
        '{"custom_id": "broken", "method": "POST", ',  # 2: bad JSON
        json.dumps({**chat_line("x", "hi"), "custom_id": None}),  # 3: no custom_id
        json.dumps(chat_line("ok", "again")),  # 4: duplicate custom_id
        json.dumps({**chat_line("url", "hi"), "url": "/v1/embeddings"}),  # 5: url is not the endpoint
        json.dumps(chat_line("model", "hi") | {"body": {"model": "no-such-model", "messages": []}}),  # 6
        json.dumps(chat_line("fine", "hi")),  # 7
    ]
    source = client.files.create(file=("bad.jsonl", "\n".join(lines).encode()), purpose="batch")
    created = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_until(client, created.id, lambda b: b.status in FINAL)
    assert batch.status == "failed" and batch.failed_at, batch
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.code) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line"),
        (3, "missing_custom_id"),
        (4, "duplicate_custom_id"),
        (5, "invalid_url"),
        (6, "model_not_found"),
    ]
    assert batch.output_file_id is None and batch.error_file_id is None


def test_batch_refuses_unknown_files_and_endpoints(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    source = client.files.create(file=("x.jsonl", jsonl([chat_line("a", "hi")])), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=source.id, endpoint="/v1/moderations", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_cancel_mid_run_keeps_partial_output_and_interactive_requests_go_first(
    client: openai.OpenAI, herd: HerdServer
) -> None:
    rows = [chat_line(f"c{i}", f"Write a long story about the number {i}.", max_tokens=32) for i in range(30)]
    source = client.files.create(file=("cancel.jsonl", jsonl(rows)), purpose="batch")
    created = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(client, created.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 1)
    # The batch fills the worker's slots, yet an interactive request is served while it runs.
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0
    )
    assert answer.choices[0].message.content
    assert client.batches.retrieve(created.id).status == "in_progress"
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = wait_until(client, created.id, lambda b: b.status in FINAL)
    assert batch.status == "cancelled" and batch.cancelled_at, batch
    assert batch.request_counts is not None
    done = batch.request_counts.completed
    assert 1 <= done < 30 and batch.request_counts.failed == 0
    outputs = results(client, batch.output_file_id)
    ids = [str(o["custom_id"]) for o in outputs]
    assert len(ids) == len(set(ids)) == done  # partial output kept, each line once
    time.sleep(2)  # nothing more is written after the cancel
    assert len(results(client, batch.output_file_id)) == done
    assert herd.redis.zcard(f"herd:batchq:{MODEL}") == 0  # no line left waiting


def test_expiry_mid_run_keeps_results_and_reports_the_rest_as_expired(client: openai.OpenAI, herd: HerdServer) -> None:
    rows = [chat_line(f"x{i}", f"Write a poem about the number {i}.", max_tokens=24) for i in range(24)]
    source = client.files.create(file=("expire.jsonl", jsonl(rows)), purpose="batch")
    created = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(client, created.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 1)

    def window_closed(pipe: redis.client.Pipeline) -> None:  # the 24 hours are over (WATCHed like the server's own)
        record = json.loads(pipe.get(f"herd:batch:{created.id}"))  # type: ignore[arg-type]
        record["batch"]["expires_at"] = int(time.time()) - 1
        pipe.multi()
        pipe.set(f"herd:batch:{created.id}", json.dumps(record))

    herd.redis.transaction(window_closed, f"herd:batch:{created.id}")
    batch = wait_until(client, created.id, lambda b: b.status in FINAL)
    assert batch.status == "expired" and batch.expired_at, batch
    assert batch.request_counts is not None
    done, failed = batch.request_counts.completed, batch.request_counts.failed
    assert done >= 1 and failed >= 1 and done + failed == 24
    outputs = results(client, batch.output_file_id)
    errors = results(client, batch.error_file_id)
    assert len(outputs) == done and len(errors) == failed
    assert sorted(str(o["custom_id"]) for o in outputs + errors) == sorted(f"x{i}" for i in range(24))
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)  # type: ignore[index]


def test_sigkill_of_a_worker_mid_batch_still_runs_every_line_exactly_once(
    client: openai.OpenAI, herd: HerdServer
) -> None:
    rows = [chat_line(f"k{i}", f"Tell me about the colour number {i}.", max_tokens=16) for i in range(16)]
    source = client.files.create(file=("kill.jsonl", jsonl(rows)), purpose="batch")
    created = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(client, created.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2)
    (worker,) = herd.workers()
    assert worker.slots_busy > 0 or herd.redis.zcard(f"herd:queue:{MODEL}") > 0
    os.kill(worker.pid, signal.SIGKILL)
    at_kill = client.batches.retrieve(created.id)
    assert at_kill.status == "in_progress" and at_kill.request_counts is not None
    assert at_kill.request_counts.completed < 16
    batch = wait_until(client, created.id, lambda b: b.status in FINAL)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (16, 0)
    outputs = results(client, batch.output_file_id)
    ids = sorted(str(o["custom_id"]) for o in outputs)
    assert ids == sorted(f"k{i}" for i in range(16))  # every line, none twice
    assert all(o["response"]["body"]["choices"][0]["message"]["content"] for o in outputs)  # type: ignore[index]
    assert "running it again" in herd.log_path.read_text()  # lines of the dead worker really were re-run
    # The dead worker's jobs were taken out of the queue, not left counted as running for arq's hour-long timeout.
    assert herd.redis.zcard(f"herd:queue:{MODEL}") == 0


def test_api_restart_mid_batch_loses_no_line_and_runs_none_twice(
    redis_port: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = tmp_path_factory.mktemp("restart-files")
    logs = tmp_path_factory.mktemp("restart")
    env = {"HERD_FILES_DIR": str(files), "HERD_BATCH_LEASE_MS": "4000"}
    first = HerdServer(redis_port, db=5, log_path=logs / "first.log", **env)
    try:
        with openai.OpenAI(base_url=f"{first.base_url}/v1", api_key="unused", timeout=120, max_retries=0) as c:
            rows = [chat_line(f"r{i}", f"Describe city number {i}.", max_tokens=24) for i in range(12)]
            source = c.files.create(file=("restart.jsonl", jsonl(rows)), purpose="batch")
            created = c.batches.create(
                input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            wait_until(c, created.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2)
    finally:
        first.stop()
    second = HerdServer(redis_port, db=5, log_path=logs / "second.log", flush=False, **env)
    try:
        with openai.OpenAI(base_url=f"{second.base_url}/v1", api_key="unused", timeout=120, max_retries=0) as c:
            mid = c.batches.retrieve(created.id)
            assert mid.request_counts is not None and mid.request_counts.completed < 12, mid
            batch = wait_until(c, created.id, lambda b: b.status in FINAL)
            assert batch.status == "completed", batch
            assert batch.request_counts is not None
            assert (batch.request_counts.completed, batch.request_counts.failed) == (12, 0)
            ids = sorted(str(o["custom_id"]) for o in results(c, batch.output_file_id))
            assert ids == sorted(f"r{i}" for i in range(12))
    finally:
        second.stop()


def test_another_caller_gets_404_for_files_and_batches(client: openai.OpenAI, bob: openai.OpenAI) -> None:
    source = client.files.create(file=("mine.jsonl", jsonl([chat_line("a", "hi", max_tokens=2)])), purpose="batch")
    created = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    for call in (
        lambda: bob.files.retrieve(source.id),
        lambda: bob.files.content(source.id),
        lambda: bob.files.delete(source.id),
        lambda: bob.batches.retrieve(created.id),
        lambda: bob.batches.cancel(created.id),
        lambda: bob.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert source.id not in [f.id for f in bob.files.list()]
    assert created.id not in [b.id for b in bob.batches.list()]
    batch = wait_until(client, created.id, lambda b: b.status in FINAL)
    assert batch.status == "completed", batch
    with pytest.raises(openai.NotFoundError):
        bob.files.content(str(batch.output_file_id))  # the results belong to alice too
    assert client.files.content(source.id).content  # and alice still has everything
