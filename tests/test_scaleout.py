"""Scale-out evidence: one `herd api` and three `herd worker` processes on one Redis database.

Model A (`scale-a`) has two workers, model B (`scale-b`) one; both names serve the bundled GGUF. Requests go
through the openai SDK; which worker ran a request is read from its herd:stats record.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import msgspec
import openai
import pytest
import redis
from herd.inference import RequestStats, WorkerStatus

from tests.conftest import free_port

A, B = "scale-a", "scale-b"
DB = 3  # 4-14 belong to other test modules


class Fleet:
    """The processes a Kubernetes install would run as pods, here as children of the test."""

    def __init__(self, redis_port: int, workdir: Path, model_path: str) -> None:
        self.redis = redis.Redis(host="127.0.0.1", port=redis_port, db=DB)
        self.redis.flushdb()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.workdir = workdir
        self.env = {
            **os.environ,
            "HERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/{DB}",
            "HERD_MODELS": f"{A}={model_path},{B}={model_path}",
            "HERD_MAX_SEQS": "2",  # few slots: concurrent requests must spill over to the second A worker
            "HERD_N_THREADS": "1",  # three engines share two cores with other test sessions
            "HERD_MODELS_DIR": str(workdir / "models"),
            "HERD_FILES_DIR": str(workdir / "files"),
            "HERD_LOG_LEVEL": "info",
        }
        self.logs: list[IO[bytes]] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.start("api", ["api", "--host", "127.0.0.1", "--port", str(self.port)])
        for name, model in (("a1", A), ("a2", A), ("b1", B)):
            self.start(name, ["worker", "--model", model])

    def start(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "herd", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.workdir.glob("*.log")))

    def workers(self) -> list[WorkerStatus]:
        keys = list(self.redis.scan_iter(match="herd:worker:*"))
        values = self.redis.mget(keys) if keys else []
        return [msgspec.json.decode(v, type=WorkerStatus) for v in values if v]

    def worker_of(self, name: str) -> str:
        """The worker id the process `name` announces in its heartbeat."""
        pid = self.procs[name].pid
        (found,) = [w.worker_id for w in self.workers() if w.pid == pid]
        return found

    def stats(self, request_id: str) -> RequestStats | None:
        raw = self.redis.get(f"herd:stats:{request_id}")
        return msgspec.json.decode(raw, type=RequestStats) if raw else None

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early:\n{self.log_tail()}")
            if len(self.workers()) == 3:
                try:
                    if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        raise RuntimeError(f"the fleet was not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
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
def fleet(redis_port: int, model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(redis_port, tmp_path_factory.mktemp("fleet"), model_path)
    try:
        f.wait_ready()
        yield f
    finally:
        f.stop()


def client(fleet: Fleet) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fleet.base_url, api_key="unused", timeout=180, max_retries=0)


async def complete(api: openai.AsyncOpenAI, model: str, max_tokens: int = 24) -> tuple[int, str]:
    """(HTTP status, request id) of one completion; APIStatusError statuses are returned, not raised."""
    try:
        raw = await api.completions.with_raw_response.create(
            model=model, prompt="List some colours:", max_tokens=max_tokens, temperature=0
        )
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers.get("x-request-id", "")
    raw.parse()  # a body that is not a completion fails here
    return raw.status_code, raw.headers["x-request-id"]


async def wait_for(predicate: object, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {within}s")


def workers_of(fleet: Fleet, ids: list[str]) -> list[str]:
    found = []
    for rid in ids:
        stats = fleet.stats(rid)
        assert stats is not None, f"no stats for {rid}"
        found.append(stats.worker_id)
    return found


async def test_workers_announce_their_models(fleet: Fleet) -> None:
    by_model: dict[str, int] = {}
    for w in fleet.workers():
        for m in w.models:
            by_model[m] = by_model.get(m, 0) + 1
    assert by_model == {A: 2, B: 1}
    async with client(fleet) as api:
        listed = {m.id async for m in api.models.list()}
    assert {A, B} <= listed


async def test_requests_spread_over_a_and_b_stays_on_its_worker(fleet: Fleet) -> None:
    a_workers = {fleet.worker_of("a1"), fleet.worker_of("a2")}
    b_worker = fleet.worker_of("b1")
    async with client(fleet) as api:
        results = await asyncio.gather(*(complete(api, A) for _ in range(8)), *(complete(api, B) for _ in range(4)))
        assert [status for status, _ in results] == [200] * 12
        served_a = workers_of(fleet, [rid for _, rid in results[:8]])
        served_b = workers_of(fleet, [rid for _, rid in results[8:]])
        # Eight concurrent requests and two slots per worker: both A workers must have taken some.
        assert set(served_a) == a_workers, served_a
        assert set(served_b) == {b_worker}, served_b


async def test_sigterm_of_an_a_worker_under_load_loses_no_request(fleet: Fleet) -> None:
    async with client(fleet) as api:
        leaving = fleet.worker_of("a1")
        staying = fleet.worker_of("a2")
        before = set(fleet.redis.scan_iter(match="herd:started:*"))
        tasks = [asyncio.create_task(complete(api, A, max_tokens=48)) for _ in range(10)]

        def leaving_started_one() -> bool:  # herd:started:{id} holds the id of the worker that took the request
            new = set(fleet.redis.scan_iter(match="herd:started:*")) - before
            return any(fleet.redis.get(key) == leaving.encode() for key in new)

        # SIGTERM once the leaving worker runs some of them: it finishes what it runs and takes nothing new.
        await wait_for(leaving_started_one, 60)
        fleet.procs["a1"].send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks)
        assert [status for status, _ in results] == [200] * 10
        served = workers_of(fleet, [rid for _, rid in results])
        assert leaving in served and staying in served, served  # the drained worker really had work in flight
        assert fleet.procs["a1"].wait(timeout=60) == 0
        # A keeps working on its remaining worker.
        status, rid = await complete(api, A)
        assert status == 200 and workers_of(fleet, [rid]) == [staying]


async def test_sigkill_of_b_gives_503_for_b_only(fleet: Fleet) -> None:
    async with client(fleet) as api:
        fleet.procs["b1"].send_signal(signal.SIGKILL)
        fleet.procs["b1"].wait(timeout=10)
        # The heartbeat expires (heartbeat_ttl_s, 3 s): from then on B is refused at once, with a clear error.
        await wait_for(lambda: all(B not in w.models for w in fleet.workers()), 20)
        with pytest.raises(openai.APIStatusError) as refused:
            await api.completions.create(model=B, prompt="Hi", max_tokens=4)
        assert refused.value.status_code == 503
        assert B in str(refused.value.message)
        results = await asyncio.gather(*(complete(api, A) for _ in range(4)))
        assert [status for status, _ in results] == [200] * 4
