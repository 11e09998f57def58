"""bench/fleet.py: simulated workers hosted several to a process (bench.scaleout --fleet-procs) are still separate
workers to the API and to Redis, and a SIGTERM to their process drains every one of them, not only the last built.

Real processes started the way the benchmark starts them (bench.scaleout.start_fleet in a ProcessGroup, on a private
redis-server): one `herd api` and two bench.fleet processes hosting two simulated workers each (one slot apiece)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from herd import channels
from herd.inference import RequestStats, WorkerStatus

from bench.scaleout import MODEL, ProcessGroup, start_fleet, start_redis, worker_commands

WAIT_S = 60  # bound on waits for things that take a second or two


def test_worker_commands_split_the_fleet_over_the_processes() -> None:
    hosts = worker_commands(5, 20.0, 2)
    assert [c[:3] for c in hosts] == [[sys.executable, "-m", "bench.fleet"]] * 2
    assert [int(c[c.index("--workers") + 1]) for c in hosts] == [3, 2]
    assert [int(c[c.index("--workers") + 1]) for c in worker_commands(2, 20.0, 5)] == [1, 1]  # no empty process
    alone = worker_commands(3, 20.0)
    assert alone == [[sys.executable, "-m", "herd", "worker", "--model", MODEL, "--simulate", "20.0"]] * 3
    assert worker_commands(2, 0.0, 2) == [[sys.executable, "-m", "herd", "worker", "--model", MODEL]] * 2


class HostedFleet:
    def __init__(self, redis_group: ProcessGroup, group: ProcessGroup, workdir: Path) -> None:
        port = start_redis(redis_group, workdir)
        self.redis = redis.Redis(port=port)
        args = argparse.Namespace(threads=1, max_seqs=1, simulate=20.0, fleet_procs=2)
        procs, self.base = start_fleet(group, 4, port, args, workdir)
        self.hosts = procs[1:]

    def workers(self) -> list[WorkerStatus]:
        keys = list(self.redis.scan_iter(match=channels.worker("*")))
        return [msgspec.json.decode(v, type=WorkerStatus) for v in self.redis.mget(keys) if v] if keys else []

    def served_by(self, request_id: str) -> str:
        raw = self.redis.get(channels.stats(request_id))
        assert raw is not None, f"no stats for {request_id}"
        return msgspec.json.decode(raw, type=RequestStats).worker_id

    def started_by(self) -> set[str]:
        keys = list(self.redis.scan_iter(match=channels.started("*")))
        return {v.decode() for v in self.redis.mget(keys) if v} if keys else set()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostedFleet]:
    # Redis's group ends after the fleet's, as in bench.scaleout.measure_fleet: the workers drain against it.
    with ProcessGroup(grace_s=10) as redis_group, ProcessGroup(grace_s=30) as group:
        hosted = HostedFleet(redis_group, group, tmp_path_factory.mktemp("hosted"))
        try:
            yield hosted
        finally:
            hosted.redis.close()


async def complete(http: httpx.AsyncClient, max_tokens: int) -> tuple[int, str]:
    body: dict[str, Any] = {"model": MODEL, "prompt": "Count:", "max_tokens": max_tokens, "temperature": 0}
    resp = await http.post("/v1/completions", json=body)
    return resp.status_code, resp.headers.get("x-request-id", "")


def test_hosted_workers_are_separate_workers(fleet: HostedFleet) -> None:
    workers = fleet.workers()
    ids = {w.worker_id for w in workers}
    assert len(workers) == 4 and len(ids) == 4, [w.worker_id for w in workers]
    by_pid: dict[int, int] = {}
    for w in workers:
        by_pid[w.pid] = by_pid.get(w.pid, 0) + 1
    assert by_pid == {p.pid: 2 for p in fleet.hosts}  # two to a process, in the two host processes
    assert set(fleet.redis.zrange(channels.WORKERS, 0, -1)) == {i.encode() for i in ids}


async def test_the_api_dispatches_to_each_hosted_worker_and_sigterm_drains_a_whole_host(fleet: HostedFleet) -> None:
    leaving, staying = fleet.hosts
    ids = {w.worker_id for w in fleet.workers()}
    leaving_ids = {w.worker_id for w in fleet.workers() if w.pid == leaving.pid}
    async with httpx.AsyncClient(base_url=fleet.base, timeout=WAIT_S) as http:
        # One slot per worker and four 40-token requests (2 s each at 20 tokens/s): each worker must run one.
        tasks = [asyncio.create_task(complete(http, 40)) for _ in range(4)]
        deadline = time.monotonic() + WAIT_S
        while fleet.started_by() != ids:
            assert time.monotonic() < deadline, f"started by {fleet.started_by()}, workers {ids}"
            await asyncio.sleep(0.05)
        leaving.terminate()  # while both of its workers run a request: each finishes it, then the process exits
        results = await asyncio.gather(*tasks)
        assert [status for status, _ in results] == [200] * 4
        assert {fleet.served_by(rid) for _, rid in results} == ids
        assert await asyncio.to_thread(leaving.wait, WAIT_S) == 0
        # Both of its workers left the fleet view at once (not only the last one built); the others serve on.
        assert {w.worker_id for w in fleet.workers()} == ids - leaving_ids
        status, rid = await complete(http, 4)
        assert status == 200 and fleet.served_by(rid) in ids - leaving_ids
    assert staying.poll() is None
