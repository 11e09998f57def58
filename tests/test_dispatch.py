"""Dispatch (api/gateway.py's choice of worker, workers/jobs.py's own queues) on real `herd api` and `herd worker`
processes over one Redis database: the Redis commands that touch a request do not grow with the number of workers,
a follow-up chat turn goes to the worker that served the conversation, and a job given to a worker that stops before
starting it runs once, elsewhere. Which worker ran a request is read from its herd:stats record."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
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

from tests.conftest import MODEL, free_port

DB = 10  # shared with test_helm_run (each flushes it first)


class Fleet:
    def __init__(self, redis_port: int, workdir: Path) -> None:
        self.redis = redis.Redis(host="127.0.0.1", port=redis_port, db=DB)
        self.redis.flushdb()
        self.redis_port = redis_port
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.env = {
            **os.environ,
            "HERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/{DB}",
            "HERD_MAX_SEQS": "2",
            "HERD_N_THREADS": "1",  # several engines share two cores
            "HERD_FILES_DIR": str(workdir / "files"),
            "HERD_MODELS_DIR": str(workdir / "models"),
        }
        self.logs: list[IO[bytes]] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.start("api", ["api", "--host", "127.0.0.1", "--port", str(self.port)])

    def start(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "herd", *args], env=self.env, stdout=log, stderr=log)

    def add_workers(self, *names: str) -> None:
        for name in names:
            self.start(name, ["worker", "--model", MODEL])
        self.wait_workers(len([n for n in self.procs if n != "api"]))

    def wait_workers(self, n: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited:\n{self.log_tail()}"
            try:
                if (
                    httpx.get(f"{self.base}/readyz?workers={n}", timeout=2).status_code == 200
                    and len(self.workers()) == n
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{n} workers not ready:\n{self.log_tail()}")

    def workers(self) -> list[WorkerStatus]:
        keys = list(self.redis.scan_iter(match="herd:worker:*"))
        return [msgspec.json.decode(v, type=WorkerStatus) for v in self.redis.mget(keys) if v] if keys else []

    def worker_id(self, name: str) -> str:
        (found,) = [w.worker_id for w in self.workers() if w.pid == self.procs[name].pid]
        return found

    def served_by(self, request_id: str) -> str:
        raw = self.redis.get(f"herd:stats:{request_id}")
        assert raw is not None, f"no stats for {request_id}"
        return msgspec.json.decode(raw, type=RequestStats).worker_id

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.workdir.glob("*.log")))

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key="unused", timeout=120, max_retries=0)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
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
    f = Fleet(redis_port, tmp_path_factory.mktemp("dispatch"))
    try:
        yield f
    finally:
        f.stop()


class Monitor:
    """Redis' MONITOR on this test's database: every command, as Redis received it (scripts' calls included)."""

    def __init__(self, port: int) -> None:
        self.lines: list[str] = []
        self._client = redis.Redis(host="127.0.0.1", port=port)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        with self._client.monitor() as monitor:
            self._ready.set()
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                if command.get("db") == DB:
                    self.lines.append(command["command"])

    def stop(self) -> list[str]:
        self._stop.set()
        self._client.set("herd-test-monitor-wakeup", 1)  # one more command, so listen() returns
        self._thread.join(10)
        self._client.close()
        return self.lines


async def completion(api: openai.AsyncOpenAI, prompt: str) -> str:
    raw = await api.completions.with_raw_response.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    raw.parse()
    return raw.headers["x-request-id"]


async def commands_per_request(fleet: Fleet, n: int) -> list[int]:
    """Commands that name each of n sequential requests (admission, start, claim, events, stats, cleanup)."""
    monitor = Monitor(fleet.redis_port)
    async with fleet.client() as api:
        ids = [await completion(api, f"Request {i}: name a colour.") for i in range(n)]
    await asyncio.sleep(1.0)  # the ends of the last jobs (ledger, arq's keys) are written after the reply
    lines = monitor.stop()
    return [sum(rid in line for line in lines) for rid in ids]


async def test_commands_per_request_do_not_grow_with_the_fleet(fleet: Fleet) -> None:
    fleet.add_workers("w1")
    alone = await commands_per_request(fleet, 4)
    fleet.add_workers("w2", "w3")
    three = await commands_per_request(fleet, 4)
    print(f"commands naming a request: 1 worker {alone}, 3 workers {three}")
    assert min(alone) > 0
    # Before: every worker was woken by each request and raced for it, so each added worker added commands.
    assert sum(three) <= sum(alone) * 1.1, (alone, three)


async def test_a_follow_up_turn_goes_to_the_worker_of_its_conversation(fleet: Fleet) -> None:
    fleet.wait_workers(3)
    system = "You are a terse assistant who answers in one short sentence. " * 3
    async with fleet.client() as api:
        for topic in ("colours", "rivers", "birds", "stones"):
            messages: list[dict[str, str]] = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Name one of the {topic} you like."},
            ]
            first = await api.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=messages,
                max_tokens=6,
                temperature=0,  # type: ignore[arg-type]
            )
            reply = first.parse().choices[0].message.content or ""
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And another?"}]
            second = await api.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=messages,
                max_tokens=6,
                temperature=0,  # type: ignore[arg-type]
            )
            second.parse()
            ids = first.headers["x-request-id"], second.headers["x-request-id"]
            assert fleet.served_by(ids[1]) == fleet.served_by(ids[0]), topic
    async with httpx.AsyncClient() as http:
        exposition = (await http.get(f"{fleet.base}/metrics")).text
    hits = [line for line in exposition.splitlines() if line.startswith("herd_dispatches_total") and "hit" in line]
    assert hits and float(hits[0].rsplit(" ", 1)[1]) >= 4, hits


async def test_a_job_given_to_a_worker_that_stops_runs_once_elsewhere(fleet: Fleet) -> None:
    fleet.wait_workers(3)
    messages: list[dict[str, str]] = [{"role": "user", "content": "Say a word."}]
    async with fleet.client() as api:
        first = await api.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,
            max_tokens=4,
            temperature=0,  # type: ignore[arg-type]
        )
        messages += [{"role": "assistant", "content": first.parse().choices[0].message.content or ""}]
        messages += [{"role": "user", "content": "Another."}]
        holder = fleet.served_by(first.headers["x-request-id"])
        (name,) = [n for n in fleet.procs if n != "api" and fleet.worker_id(n) == holder]
        fleet.procs[name].send_signal(signal.SIGSTOP)  # alive to the API until its heartbeat expires
        try:
            # Affinity puts the follow-up on the stopped worker's queue; once its heartbeat is gone the API hands
            # the job to the overflow and another worker runs it.
            second = await api.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=messages,
                max_tokens=4,
                temperature=0,  # type: ignore[arg-type]
            )
            second.parse()
        finally:
            fleet.procs[name].send_signal(signal.SIGCONT)
    rid = second.headers["x-request-id"]
    runner = fleet.served_by(rid)
    assert runner != holder
    assert "requeued" in (fleet.workdir / "api.log").read_text()
    # The woken worker finds the job gone from its queue (and started elsewhere): it never runs it.
    fleet.wait_workers(3)
    await asyncio.sleep(1.5)
    assert fleet.redis.get(f"herd:started:{rid}") == runner.encode()
    assert rid not in (fleet.workdir / f"{name}.log").read_text()
