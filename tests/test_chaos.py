"""Faults not covered elsewhere (worker SIGKILL/SIGSTOP: test_lifecycle, test_batch; Redis restart: test_redis_restart),
each with its outcome asserted: Redis stalled by CLIENT PAUSE mid-stream, the API process SIGKILLed mid-batch (the next
API finishes the batch: nothing lost, nothing run twice), and a full disk under the files directory (injected as the
API process's file-size limit: writes fail with EFBIG exactly where ENOSPC would)."""

from __future__ import annotations

import json
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.conftest import MODEL, HerdServer
from tests.test_batch import FINAL, chat_line, jsonl, results, wait_until
from tests.test_redis_restart import PrivateRedis


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def api_pid(server: HerdServer) -> int:
    (pid,) = [pid for pid, cmd in children(server.proc.pid) if " herd api " in f" {cmd} "]
    return pid


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis-chaos"))
    server.start()
    yield server
    server.kill()


def test_client_pause_mid_stream_delays_but_loses_nothing(
    private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    herd = HerdServer(private_redis.port, db=1, log_path=tmp_path_factory.mktemp("pause") / "serve.log")
    try:
        body = {"model": MODEL, "prompt": "Count from one to fifty:", "max_tokens": 64, "stream": True, "seed": 1}
        expected = httpx.post(f"{herd.base_url}/v1/completions", json={**body, "stream": False}, timeout=120).json()
        pauser = redis.Redis(port=private_redis.port)
        frames: list[str] = []
        with httpx.stream("POST", f"{herd.base_url}/v1/completions", json=body, timeout=120) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    if len(frames) == 3:
                        pauser.execute_command("CLIENT", "PAUSE", "2500", "ALL")  # every command waits 2.5 s
        pauser.close()
        assert frames[-1] == "[DONE]"
        chunks = [json.loads(f) for f in frames[:-1]]
        errors = [c for c in chunks if "error" in c]
        print(f"CLIENT PAUSE mid-stream: {len(chunks)} chunks, error frames: {errors}")
        if errors:  # a stall may be reported, but only as an error frame, never as a silent cut
            assert errors[0]["error"]["code"] in ("worker_lost", "stream_broken", "unavailable")
        else:
            text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
            assert text == expected["choices"][0]["text"]  # nothing lost or doubled while Redis stood still
        after = httpx.post(f"{herd.base_url}/v1/completions", json={**body, "stream": False}, timeout=120)
        assert after.status_code == 200 and after.json()["choices"][0]["text"] == expected["choices"][0]["text"]
    finally:
        herd.stop()


def test_api_sigkill_mid_batch_loses_no_line_and_runs_none_twice(
    private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {"HERD_FILES_DIR": str(tmp_path_factory.mktemp("kill-files")), "HERD_BATCH_LEASE_MS": "3000"}
    logs = tmp_path_factory.mktemp("api-kill")
    first = HerdServer(private_redis.port, db=2, log_path=logs / "first.log", **env)
    try:
        with openai.OpenAI(base_url=f"{first.base_url}/v1", api_key="unused", timeout=120, max_retries=0) as c:
            rows = [chat_line(f"s{i}", f"Name a river, number {i}.", max_tokens=16) for i in range(12)]
            source = c.files.create(file=("kill.jsonl", jsonl(rows)), purpose="batch")
            created = c.batches.create(
                input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            wait_until(c, created.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2)
        os.kill(api_pid(first), signal.SIGKILL)  # no drain, no lease release: the lease must run out
        first.proc.wait(timeout=60)  # the supervisor stops the rest once its API is gone
    finally:
        first.stop()
    second = HerdServer(private_redis.port, db=2, log_path=logs / "second.log", flush=False, **env)
    try:
        with openai.OpenAI(base_url=f"{second.base_url}/v1", api_key="unused", timeout=120, max_retries=0) as c:
            batch = wait_until(c, created.id, lambda b: b.status in FINAL)
            assert batch.status == "completed", batch
            assert batch.request_counts is not None
            assert (batch.request_counts.completed, batch.request_counts.failed) == (12, 0)
            ids = [str(o["custom_id"]) for o in results(c, batch.output_file_id)]
            assert sorted(ids) == sorted(f"s{i}" for i in range(12))  # every line, none twice
    finally:
        second.stop()


def test_a_full_disk_under_the_files_directory_is_a_503_and_leaves_nothing(
    private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = tmp_path_factory.mktemp("full-files")
    herd = HerdServer(
        private_redis.port, db=3, log_path=tmp_path_factory.mktemp("full") / "serve.log", HERD_FILES_DIR=str(files)
    )
    try:
        pid = api_pid(herd)
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (256 * 1024, hard))  # the disk is "full" past 256 KiB per file
        with openai.OpenAI(base_url=f"{herd.base_url}/v1", api_key="unused", timeout=120, max_retries=0) as c:
            big = jsonl([chat_line(f"b{i}", "x" * 1000, max_tokens=1) for i in range(400)])  # ~450 KiB
            with pytest.raises(openai.APIStatusError) as refused:
                c.files.create(file=("big.jsonl", big), purpose="batch")
            assert refused.value.status_code == 503
            assert refused.value.response.headers.get("retry-after")
            assert "no space" in refused.value.message
            assert [p.name for p in files.iterdir() if p.is_file()] == []  # the partial upload is gone
            assert c.files.list().data == []
            small = c.files.create(file=("small.jsonl", jsonl([chat_line("a", "hi", max_tokens=1)])), purpose="batch")
            assert c.files.retrieve(small.id).bytes > 0  # room for what fits: the server goes on
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
            again = c.files.create(file=("big.jsonl", big), purpose="batch")  # space again: the same upload works
            assert again.bytes == len(big)
    finally:
        herd.stop()
