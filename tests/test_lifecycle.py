"""Overload, cancellation and dead workers, on a server with one slot and a queue bound of 2."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MODEL, HerdServer

LONG = {"model": MODEL, "prompt": "Count from one to one thousand:", "max_tokens": 1500, "temperature": 0}


@pytest.fixture(scope="module")
def tiny(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    srv = HerdServer(
        redis_port, db=12, log_path=tmp_path_factory.mktemp("tiny") / "serve.log", HERD_MAX_SEQS="1", HERD_QUEUE_MAX="2"
    )
    yield srv
    srv.stop()


async def wait_for(predicate: object, within: float) -> float:
    """Poll `predicate` until true; returns the seconds it took (fails the test on timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within}s")


def busy_slots(server: HerdServer) -> int:
    return sum(w.slots_busy for w in server.workers())


async def test_queue_full_is_503_with_retry_after_and_queued_request_never_starts(tiny: HerdServer) -> None:
    queue_key = f"herd:queue:{MODEL}"
    async with httpx.AsyncClient(base_url=tiny.base_url, timeout=60) as http:
        async with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as running:
            assert running.status_code == 200
            queued = asyncio.create_task(http.post("/v1/completions", json=LONG))
            await wait_for(lambda: tiny.redis.zcard(queue_key) >= 2, 10)
            queued_id = next(
                m.decode() for m in tiny.redis.zrange(queue_key, 0, -1) if m.decode() != running.headers["x-request-id"]
            )
            # The queue you can see into: one running, one waiting (next in line), one slot, busy.
            await wait_for(lambda: busy_slots(tiny) == 1, 3)  # heartbeats come once a second
            (row,) = (await http.get("/v1/queue")).json()["models"]
            assert (row["model"], row["running"], row["waiting"], row["workers"]) == (MODEL, 1, 1, 1)
            assert (row["slots_total"], row["slots_busy"]) == (1, 1) and row["oldest_wait_s"] >= 0
            waiting = (await http.get(f"/v1/queue/{queued_id}")).json()
            assert (waiting["state"], waiting["position"], waiting["model"]) == ("waiting", 0, MODEL)
            running_state = (await http.get(f"/v1/queue/{running.headers['x-request-id']}")).json()
            assert running_state["state"] == "running"
            assert (await http.get("/v1/queue/no-such-request")).json()["state"] == "unknown"
            over = await http.post("/v1/completions", json=LONG)
            assert over.status_code == 503
            assert over.headers["retry-after"].isdigit()
            assert over.json()["error"]["code"] == "overloaded"
            queued.cancel()  # the client of the queued request goes away
            with pytest.raises(asyncio.CancelledError):
                await queued
            # Its record goes at once, while the only slot is still busy and no worker could have taken the job.
            await wait_for(lambda: tiny.redis.get(f"herd:request:{queued_id}") is None, 10)
            assert busy_slots(tiny) == 1
        # The running stream was closed too: the slot frees, and the abandoned queued request must not start.
        await wait_for(lambda: busy_slots(tiny) == 0 and tiny.redis.zcard(queue_key) == 0, 10)
    await asyncio.sleep(0.5)
    assert tiny.redis.get(f"herd:started:{queued_id}") is None
    assert tiny.stats(queued_id) is None
    # Its record went with it (arq aborted the job before generate() could forget it), not request_ttl_s later.
    assert tiny.redis.get(f"herd:request:{queued_id}") is None


async def test_disconnect_mid_stream_stops_generation(tiny: HerdServer) -> None:
    async with (
        httpx.AsyncClient(base_url=tiny.base_url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as resp,
    ):
        rid = resp.headers["x-request-id"]
        chunks = 0
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                chunks += 1
            if chunks >= 5:
                break
    await wait_for(lambda: tiny.stats(rid) is not None, 30)
    stats = tiny.stats(rid)
    assert stats is not None
    # The worker stopped on the cancel, far short of the 1500 tokens asked for (no timing bound: a loaded machine
    # only makes the few tokens decoded meanwhile more).
    assert stats.finish_reason == "cancelled"
    assert stats.completion_tokens < 1500
    assert busy_slots(tiny) == 0 or await wait_for(lambda: busy_slots(tiny) == 0, 2) >= 0


async def test_disconnect_non_stream_stops_generation(tiny: HerdServer) -> None:
    async with httpx.AsyncClient(base_url=tiny.base_url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/completions", json=LONG)
    await wait_for(lambda: busy_slots(tiny) == 0, 3)
    cancelled = [w.requests_cancelled for w in tiny.workers()]
    assert sum(cancelled) >= 1


def test_sigterm_drains_the_worker_and_the_running_stream_completes(tiny: HerdServer) -> None:
    body = {**LONG, "max_tokens": 60, "stream": True, "stream_options": {"include_usage": True}}
    frames: list[str] = []
    with httpx.stream("POST", f"{tiny.base_url}/v1/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            frames.append(line)
            if len(frames) == 3:
                (worker,) = tiny.workers()
                os.kill(worker.pid, signal.SIGTERM)  # a deploy: drain, do not drop
    assert frames[-1] == "data: [DONE]"
    assert not [f for f in frames if '"error"' in f]
    assert '"completion_tokens":60' in frames[-2]
    deadline = time.monotonic() + 10
    while running(worker.pid):
        assert time.monotonic() < deadline, "the drained worker did not exit"
        time.sleep(0.1)
    tiny.wait_ready(timeout=60)  # herd serve started a new one


def test_sigkill_of_worker_mid_stream_gives_client_error_within_seconds(tiny: HerdServer) -> None:
    records_before = set(tiny.redis.scan_iter(match="herd:request:*"))
    client = openai.OpenAI(base_url=f"{tiny.base_url}/v1", api_key="x", max_retries=0)
    stream = client.completions.create(stream=True, **LONG)  # type: ignore[call-overload]
    received = 0
    killed_at = 0.0
    with pytest.raises(openai.APIError) as info, stream:
        for _chunk in stream:
            received += 1
            if received == 5:
                (worker,) = tiny.workers()
                os.kill(worker.pid, signal.SIGKILL)
                killed_at = time.monotonic()
    assert killed_at, "the stream ended before the kill"
    detected = time.monotonic() - killed_at
    assert detected < 30, f"client waited {detected:.1f}s"  # a hang guard; the heartbeat TTL is 3 s
    assert "worker" in str(info.value).lower()
    # The lost request's record (its prompt) goes with the error, not an hour later.
    assert set(tiny.redis.scan_iter(match="herd:request:*")) <= records_before
    # The supervisor restarts the worker; the service recovers without help.
    tiny.wait_ready(timeout=60)
    with client:
        resp = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3)
    assert resp.choices[0].text is not None


def child_pids(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_every_process(tiny: HerdServer) -> None:
    children = child_pids(tiny.proc.pid)
    assert len(children) >= 2, "the API and a worker run as children of herd serve"
    tiny.stop()
    assert tiny.proc.returncode == 0
    assert not [pid for pid in children if running(pid)]
    assert not [w for w in tiny.workers()], "a stopped worker removes its heartbeat"
