"""Pure pieces of the Batch API: the streaming multipart reader, input validation, result-log recovery; and the
Redis records' ownership and idempotency on the real Redis."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from herd.api.batches.validate import parse_input
from herd.api.files.filestore import ResultLog
from herd.api.files.multipart import boundary_of, read_form
from herd.api.files.records import Records
from herd.api.wire.batch import Batch, FileObject
from herd.errors import InvalidRequest, NotFound
from redis.asyncio import Redis

BOUNDARY = b"----herdtestboundary"


def form(file_bytes: bytes, purpose: str = "batch") -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\n' + purpose.encode() + b"\r\n"
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + file_bytes + b"\r\n"
        b"--" + BOUNDARY + b"--\r\n"
    )


async def pieces(data: bytes, rng: random.Random) -> AsyncIterator[bytes]:
    at = 0
    while at < len(data):
        n = rng.randint(1, 97)
        yield data[at : at + n]
        at += n


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


@pytest.mark.parametrize("seed", range(20))
def test_multipart_reader_any_chunking(seed: int) -> None:
    rng = random.Random(seed)
    # Content that looks like the delimiter's start, CRLFs and dashes: none of it may end the part early.
    payload = bytes(rng.choice(b"\r\n-ab" + BOUNDARY[:6]) for _ in range(rng.randint(0, 3000)))
    sinks: list[tuple[str, str, Sink]] = []

    def open_file(name: str, filename: str) -> Sink:
        sinks.append((name, filename, Sink()))
        return sinks[-1][2]

    fields = asyncio.run(read_form(pieces(form(payload), rng), BOUNDARY, open_file))
    assert fields == {"purpose": "batch"}
    ((name, filename, sink),) = sinks
    assert (name, filename, bytes(sink.data)) == ("file", "in.jsonl", payload)


def test_multipart_reader_refuses_a_truncated_body() -> None:
    truncated = form(b"abc")[:-20]
    with pytest.raises(InvalidRequest):
        asyncio.run(read_form(pieces(truncated, random.Random(1)), BOUNDARY, lambda n, f: Sink()))


def test_boundary_of() -> None:
    assert boundary_of('multipart/form-data; boundary="abc"') == b"abc"
    with pytest.raises(InvalidRequest):
        boundary_of("application/json")


def line(custom_id: object, url: str = "/v1/chat/completions", model: str = "m") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_parse_input_names_each_bad_line() -> None:
    text = "\n".join(
        [line("a"), "not json", line(None), line("a"), line("b", url="/v1/embeddings"), line("c", model="zz"), ""]
    )
    lines, errors, model = parse_input(text.encode(), "/v1/chat/completions", {"m"}, 100)
    assert [(e.line, e.code) for e in errors] == [
        (2, "invalid_json_line"),
        (3, "missing_custom_id"),
        (4, "duplicate_custom_id"),
        (5, "invalid_url"),
        (6, "model_not_found"),
    ]
    assert [(x.number, x.custom_id) for x in lines] == [(1, "a")] and model == "m"
    assert json.loads(lines[0].body)["model"] == "m"


def test_parse_input_non_utf8_and_empty() -> None:
    _, errors, _ = parse_input(line("a").encode() + b"\n\xff\xfe\n", "/v1/chat/completions", {"m"}, 10)
    assert [(e.line, e.code) for e in errors] == [(2, "invalid_file")]
    _, errors, _ = parse_input(b"\n\n", "/v1/chat/completions", {"m"}, 10)
    assert [e.code for e in errors] == ["empty_file"]
    _, errors, _ = parse_input(f"{line('a')}\n{line('b')}".encode(), "/v1/chat/completions", {"m"}, 1)
    assert [e.code for e in errors] == ["too_many_requests"]


def test_result_log_recovery_cuts_a_torn_last_line(tmp_path: Path) -> None:
    log = ResultLog(tmp_path / "out.jsonl")
    assert log.recover() == []
    log.append([b'{"custom_id": "a", "x": 1}', b'{"custom_id": "b"}'])
    with log.path.open("ab") as fh:
        fh.write(b'{"custom_id": "c", "tr')  # the writer died here
    assert log.recover() == ["a", "b"]
    log.append([b'{"custom_id": "c"}'])
    assert log.recover() == ["a", "b", "c"]
    assert log.path.read_bytes().count(b"\n") == 3


async def test_records_ownership_and_idempotent_create(redis_port: int) -> None:
    redis = Redis(host="127.0.0.1", port=redis_port, db=6)
    await redis.flushdb()
    records = Records(redis)
    try:
        obj = FileObject(id="file-1", bytes=3, created_at=1, filename="a", purpose="batch")
        await records.put_file("alice", obj)
        assert await records.file("alice", "file-1") == obj
        with pytest.raises(NotFound):
            await records.file("bob", "file-1")  # someone else's file does not exist for bob
        assert (await records.files("bob", None, 10, None, False))[0] == []
        with pytest.raises(NotFound):
            await records.delete_file("bob", "file-1")

        def batch(batch_id: str) -> Batch:
            return Batch(
                id=batch_id,
                endpoint="/v1/embeddings",
                input_file_id="file-1",
                completion_window="24h",
                status="validating",
                created_at=1,
            )

        first = await records.create_batch("alice", batch("batch_1"), "key")
        again = await records.create_batch("alice", batch("batch_2"), "key")
        other = await records.create_batch("bob", batch("batch_3"), "key")  # keys are per owner
        assert (first.id, again.id, other.id) == ("batch_1", "batch_1", "batch_3")
        assert [b.id for b in (await records.batches("alice", 10, None))[0]] == ["batch_1"]
        for n in (4, 5):  # newer batches list first; `after` is the last id of the page before (the SDK's cursor)
            await records.create_batch("alice", msgspec.structs.replace(batch(f"batch_{n}"), created_at=n), None)
        page, more = await records.batches("alice", 2, None)
        assert ([b.id for b in page], more) == (["batch_5", "batch_4"], True)
        page, more = await records.batches("alice", 2, "batch_4")
        assert ([b.id for b in page], more) == (["batch_1"], False)
        with pytest.raises(NotFound):
            await records.batch("bob", "batch_1")
        assert await records.active_batches() == ["batch_1", "batch_3", "batch_4", "batch_5"]
        assert await records.acquire("batch_1", "me", 5000)
        assert not await records.acquire("batch_1", "you", 5000)
        assert not await records.renew("batch_1", "you", 5000)
        assert await records.renew("batch_1", "me", 5000)
        await records.release("batch_1", "you")  # not the holder: no effect
        assert not await records.acquire("batch_1", "you", 5000)
        await records.release("batch_1", "me")
        assert await records.acquire("batch_1", "you", 5000)
    finally:
        await redis.flushdb()
        await redis.aclose()
