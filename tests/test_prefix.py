"""Two herds on one Redis, told apart by HERD_REDIS_PREFIX (herd.channels.PREFIX). Redis databases do not separate
pub/sub channels, so the test puts both herds in the same database of a private redis-server and watches every
channel anything publishes on (PSUBSCRIBE *): one herd's cancels and job announcements reach only its own channels,
each herd's fleet view holds only its own worker, and every key either writes carries its prefix (arq's own keys,
named by unique request ids, aside). Real processes: per herd one `herd api` and one `herd worker --simulate` (no
model: tokens at a fixed rate, workers/simulated.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from herd.channels import deployment_prefix

from tests.conftest import MODEL, free_port

PREFIXES = ("alpha", "beta.2")
WAIT_S = 60  # bound on waits for processes to start and messages to arrive


class Herd:
    def __init__(self, prefix: str, redis_url: str, workdir: Path) -> None:
        self.prefix = prefix
        self.base_url = f"http://127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "HERD_REDIS_PREFIX": prefix,
            "HERD_REDIS_URL": redis_url,
            "HERD_MODELS_DIR": str(workdir / "models"),
            "HERD_FILES_DIR": str(workdir / "files"),
            "HERD_LOG_LEVEL": "info",
        }
        self.log = (workdir / "herd.log").open("wb")
        port = self.base_url.rsplit(":", 1)[1]
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "herd", *argv], env=env, stdout=self.log, stderr=subprocess.STDOUT)
            for argv in (
                ["api", "--host", "127.0.0.1", "--port", port],
                ["worker", "--model", MODEL, "--simulate", "20"],
            )
        ]

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz?workers=1", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


class Channels:
    """Every message published on the server, whatever the channel: (channel, payload)."""

    def __init__(self, client: redis.Redis) -> None:
        self.seen: list[tuple[str, bytes]] = []  # event payloads are msgpack
        self._pubsub = client.pubsub()
        self._pubsub.psubscribe(**{"*": self._on_message})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.01, daemon=True)

    def _on_message(self, message: dict[str, bytes]) -> None:
        self.seen.append((message["channel"].decode(), message["data"]))

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(timeout=WAIT_S)
        self._pubsub.close()


@pytest.fixture(scope="module")
def herds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[redis.Redis, dict[str, Herd]]]:
    workdir = tmp_path_factory.mktemp("prefix")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    started: dict[str, Herd] = {}
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the private redis-server did not start"
                time.sleep(0.05)
        for prefix in PREFIXES:
            (workdir / prefix).mkdir()
            started[prefix] = Herd(prefix, f"redis://127.0.0.1:{port}/0", workdir / prefix)  # one database for both
        for herd in started.values():
            while not herd.ready():
                assert time.monotonic() < deadline, (workdir / herd.prefix / "herd.log").read_text()[-3000:]
                assert all(p.poll() is None for p in herd.procs), (workdir / herd.prefix / "herd.log").read_text()
                time.sleep(0.2)
        yield client, started
    finally:
        for herd in started.values():
            herd.stop()
        client.close()
        server.terminate()
        server.wait(timeout=10)


def test_a_prefix_is_checked() -> None:
    assert deployment_prefix("team-a.herd_2") == "team-a.herd_2"
    for bad in ("", "a:b", "herd*", "-x", "x" * 65):
        with pytest.raises(ValueError, match="HERD_REDIS_PREFIX"):
            deployment_prefix(bad)


def test_each_herd_sees_only_its_own_fleet(herds: tuple[redis.Redis, dict[str, Herd]]) -> None:
    client, started = herds
    for prefix, herd in started.items():
        body = httpx.get(f"{herd.base_url}/readyz").json()
        assert body["workers"] == 1, f"{prefix} sees {body['workers']} workers: the other herd's too"
        (member,) = client.zrange(f"{prefix}:workers", 0, -1)
        assert client.exists(f"{prefix}:worker:{member.decode()}")
    # each worker listens on its own herd's channels only
    subscribed = sorted(c.decode() for c in client.pubsub_channels())
    assert {c.split(":", 1)[0] for c in subscribed} == set(PREFIXES), subscribed
    assert f"{PREFIXES[0]}:cancel" in subscribed and f"{PREFIXES[1]}:cancel" in subscribed


def test_cancels_and_announcements_stay_within_their_herd(herds: tuple[redis.Redis, dict[str, Herd]]) -> None:
    client, started = herds
    alpha, beta = (started[p] for p in PREFIXES)
    watch = Channels(client)
    try:
        time.sleep(0.2)  # PSUBSCRIBE is confirmed asynchronously; a miss here only weakens the check below
        done = httpx.post(
            f"{alpha.base_url}/v1/completions",
            json={"model": MODEL, "prompt": "Hello", "max_tokens": 4},
            timeout=WAIT_S,
        )
        assert done.status_code == 200, done.text
        # a stream the client abandons: alpha's API broadcasts a cancel to alpha's workers
        with httpx.stream(
            "POST",
            f"{alpha.base_url}/v1/completions",
            json={"model": MODEL, "prompt": "Hello", "max_tokens": 2000, "stream": True},
            timeout=WAIT_S,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    json.loads(line.removeprefix("data: "))
                    break
        deadline = time.monotonic() + WAIT_S
        while not any(channel == f"{alpha.prefix}:cancel" for channel, _ in watch.seen):
            assert time.monotonic() < deadline, f"no cancel from {alpha.prefix}: {watch.seen[:20]}"
            time.sleep(0.05)
        channels = {channel for channel, _ in watch.seen}
        assert any(c.startswith(f"{alpha.prefix}:announce:") for c in channels), channels  # a job went to a worker
        assert all(c.startswith(f"{alpha.prefix}:") for c in channels), channels  # nothing on beta's or herd's
    finally:
        watch.close()
    # beta still serves, and what it writes is under its own prefix
    answer = httpx.post(
        f"{beta.base_url}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4}, timeout=WAIT_S
    )
    assert answer.status_code == 200, answer.text
    prefixes = {key.decode().split(":", 1)[0] for key in client.keys("*")}
    assert prefixes <= {*PREFIXES, "arq"}, prefixes
    assert set(PREFIXES) <= prefixes
