"""A Redis that goes away mid-stream: the client gets an error frame, readiness turns 503, and herd recovers alone."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from arq.constants import health_check_key_suffix
from herd.channels import WORKER_PATTERN, worker, worker_queue

from tests.conftest import MODEL, HerdServer, free_port, redis_answers

STREAM = {"model": MODEL, "prompt": "Count from one to one thousand:", "max_tokens": 1500, "stream": True}


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateRedis, HerdServer]]:
    redis_server = PrivateRedis(tmp_path_factory.mktemp("redis-outage"))
    redis_server.start()
    herd = HerdServer(redis_server.port, db=0, log_path=tmp_path_factory.mktemp("outage") / "serve.log")
    yield redis_server, herd
    herd.stop()
    if redis_server.proc and redis_server.proc.poll() is None:
        redis_server.kill()


def test_redis_outage_mid_stream_is_an_error_frame_then_recovery(outage: tuple[PrivateRedis, HerdServer]) -> None:
    redis_server, herd = outage
    frames: list[str] = []
    with httpx.Client(base_url=herd.base_url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=STREAM) as resp:
            assert resp.status_code == 200
            killed_at = 0.0
            for line in resp.iter_lines():
                if not line:
                    continue
                frames.append(line)
                if len(frames) == 5:
                    redis_server.kill()
                    killed_at = time.monotonic()
        ended_after = time.monotonic() - killed_at
        assert frames[-1] == "data: [DONE]"
        assert '"error"' in frames[-2], frames[-3:]
        assert ended_after < 5, f"the stream took {ended_after:.1f}s to end"

        ready = http.get("/readyz")
        assert ready.status_code == 503
        down = http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
        assert down.status_code == 503
        assert down.json()["error"]["type"] == "server_error"

        redis_server.start()
        herd.wait_ready(timeout=60)
        again = http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
        assert again.status_code == 200, again.text
    # The worker's queue poll survived the outage. arq's own loop ends on a Redis error, and a job whose
    # announcement was lost while Redis came back would then wait forever. Each poll refreshes arq's health-check
    # key (every 5 s, for 6 s); a finished job polls once, so past those 6 s only a live loop keeps it there.
    # The worker polls its own queue (the API puts the jobs it chose it for there): that queue's key.
    time.sleep(8)
    with redis.Redis(port=redis_server.port) as restarted:
        (heartbeat,) = list(restarted.scan_iter(match=WORKER_PATTERN))
        worker_id = heartbeat.decode().removeprefix(worker("")).strip(":")
        key = f"{worker_queue(MODEL, worker_id)}{health_check_key_suffix}"
        deadline = time.monotonic() + 10
        while not restarted.exists(key):
            assert time.monotonic() < deadline, "the worker's queue poll did not come back after the outage"
            time.sleep(0.5)
