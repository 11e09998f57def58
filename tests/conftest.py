"""Fixtures: real `herd serve` processes on the real Redis with the real SmolLM2 model."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import llama_cpp as L
import msgspec
import pytest
import redis
from herd.config import bundled_model_path
from herd.inference import RequestStats, WorkerStatus

MODEL = "smollm2:135m"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HerdServer:
    """A `herd serve` child process with its own Redis database; stopped with SIGTERM like a user would."""

    def __init__(self, redis_port: int, db: int, log_path: Path, flush: bool = True, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.redis_url = f"redis://127.0.0.1:{redis_port}/{db}"
        self.redis = redis.Redis(host="127.0.0.1", port=redis_port, db=db)
        if flush:  # flush=False: a restart that finds what an earlier server left in Redis
            self.redis.flushdb()
        self.log_path = log_path
        full_env = {**os.environ, "HERD_REDIS_URL": self.redis_url, "HERD_LOG_LEVEL": "info", **env}
        self.env = full_env
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "herd", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herd serve exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.base_url}/readyz?workers=1", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"herd serve not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def workers(self) -> list[WorkerStatus]:
        keys = list(self.redis.scan_iter(match="herd:worker:*"))
        values = self.redis.mget(keys) if keys else []
        return [msgspec.json.decode(v, type=WorkerStatus) for v in values if v]

    def stats(self, request_id: str) -> RequestStats | None:
        raw = self.redis.get(f"herd:stats:{request_id}")
        return msgspec.json.decode(raw, type=RequestStats) if raw else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.redis.close()


@contextlib.contextmanager
def api_replica(server: HerdServer, log_path: Path) -> Iterator[str]:
    """A second API process (`herd api`) beside `server`, with its settings and on its Redis database, as another
    replica of one install; yields its base URL once it sees the server's worker."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "herd", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=server.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"herd api exited early:\n{log_path.read_text()[-4000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base_url}/readyz?workers=1", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"herd api not ready in 120s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)
            yield base_url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def redis_answers(port: int) -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def claim(port: int) -> IO[bytes] | None:
    """An exclusive claim on the shared Redis for this test session, or None while another session holds it.

    The tests use fixed database numbers and flush them, so two sessions at once (two checkouts tested side by
    side) must not share one Redis: the second one gets a private redis-server instead.
    """
    handle = (Path(tempfile.gettempdir()) / f"herd-tests-redis-{port}.lock").open("wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


@pytest.fixture(scope="session")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The Redis on 127.0.0.1:6379 (or HERD_TEST_REDIS_PORT) when one answers and no other test session uses it;
    else a private redis-server."""
    wanted = int(os.environ.get("HERD_TEST_REDIS_PORT", "6379"))
    lock = claim(wanted) if redis_answers(wanted) else None
    if lock is not None:
        try:
            yield wanted
        finally:
            lock.close()
        return
    if shutil.which("redis-server") is None:
        pytest.fail("no Redis on 127.0.0.1:6379 and no redis-server to start (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not redis_answers(port):
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the private redis-server did not start")
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def server(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    srv = HerdServer(redis_port, db=11, log_path=tmp_path_factory.mktemp("herd") / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def model_path() -> str:
    return bundled_model_path()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Tests marked `slow` show their time after the run (also under -q), so a check that creeps up gets seen."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", None) == "call" and "slow" in report.keywords:
                terminalreporter.write_line(f"slow: {report.nodeid} {outcome} in {report.duration:.1f}s")


@pytest.fixture(scope="session")
def vocab() -> Iterator[Any]:
    """The bundled model's vocabulary alone (no weights): what llama.cpp's grammar parser and sampler need."""
    params = L.llama_model_default_params()
    params.vocab_only = True
    model = L.llama_model_load_from_file(bundled_model_path().encode(), params)
    assert model
    yield L.llama_model_get_vocab(model)
    L.llama_model_free(model)
