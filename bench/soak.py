"""Soak: a `herd serve` on loopback under many concurrent streams for a bounded time, a share of them abandoned
mid-stream by their client and the worker SIGKILLed every few minutes (the supervisor restarts it). Afterwards, with
the traffic stopped, the API's RSS and open file descriptors, Redis' keys and pub/sub channels must be back near the
baseline taken after warm-up, and the only errors must be the injected ones (worker_lost / unavailable around a kill).

    python -m bench.soak --minutes 20 --streams 32 --kill-every 240     # the README's run
    python -m bench.soak --minutes 3 --streams 32 --kill-every 60       # a quick check

Not part of the test suite (it runs for minutes). Exit status 1 when a leak or an unexpected error is found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from bench.common import HERD_MODEL, free_port, herd_serve

INJECTED = {"worker_lost", "unavailable", "stream_broken"}  # what a killed worker may cause, and nothing else
IDLE_S = 5.0  # HERD_REDIS_IDLE_S for the soak's herd


@dataclass
class Tally:
    completed: int = 0
    abandoned: int = 0  # the client hung up on purpose
    hung_up_at_end: int = 0  # streams still running when the traffic stopped, hung up on
    injected: Counter[str] = field(default_factory=Counter)  # errors a worker kill explains
    unexpected: Counter[str] = field(default_factory=Counter)
    kills: list[float] = field(default_factory=list)  # monotonic times of the worker kills
    notes: list[str] = field(default_factory=list)  # the first unexpected errors' messages


def proc_figures(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int, redis_port: int) -> Counter[str]:
    """A process's open file descriptors by kind: TCP sockets to Redis, other TCP sockets, other sockets, the rest."""
    peers = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                peers[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)  # inode -> remote port
    kinds: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            port = peers.get(target[8:-1])
            kinds["redis" if port == redis_port else "tcp" if port is not None else "socket"] += 1
        else:
            kinds[target.split(":")[0] if ":" in target else "file"] += 1
    return kinds


def child_pid(parent: int, word: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == parent and f" herd {word} " in cmd.replace("-m herd", "herd"):
            return int(entry.name)
    return None


def redis_clients(url: str) -> dict[str, int]:
    """Redis' client connections by their last command (idle pool connections and pub/sub ones look different)."""
    client = redis.Redis.from_url(url)
    try:
        return dict(Counter(str(c.get("cmd")) for c in client.client_list()))
    finally:
        client.close()


def redis_figures(url: str) -> tuple[set[bytes], int]:
    """(keys that never expire plus request records, pub/sub channels with a subscriber). Keys with a TTL (per-request
    stats, heartbeats) are bounded by time rather than by traffic, so they are not counted."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(count=1000))
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
            ttls = pipe.execute()
        lasting = {key for key, ttl in zip(keys, ttls, strict=True) if ttl == -1 or key.startswith(b"herd:request:")}
        return lasting, len(client.pubsub_channels("herd:*"))
    finally:
        client.close()


async def one_stream(client: httpx.AsyncClient, tally: Tally, abandon_share: float, max_tokens: int) -> None:
    body = {
        "model": HERD_MODEL,
        "messages": [{"role": "user", "content": f"Tell me a fact about the number {random.randrange(1000)}."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    abandon_after = random.randrange(1, 4) if random.random() < abandon_share else None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
            if answer.status_code != 200:
                error = json.loads(await answer.aread()).get("error") or {}
                _error(tally, error.get("code") or str(answer.status_code), error.get("message", ""))
                await asyncio.sleep(1.0)  # a client backs off after an error instead of retrying at once
                return
            frames = 0
            async for line in answer.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    tally.completed += 1
                    return
                frame = json.loads(line[6:])
                if "error" in frame:
                    _error(tally, frame["error"].get("code") or "error", frame["error"].get("message", ""))
                    return
                frames += 1
                if abandon_after is not None and frames >= abandon_after:
                    tally.abandoned += 1
                    return  # leaving the block closes the connection mid-stream
            tally.unexpected["cut without [DONE]"] += 1
    except httpx.HTTPError as exc:
        tally.unexpected[type(exc).__name__] += 1


def _error(tally: Tally, code: str, message: str) -> None:
    if _near_kill(tally) and code in INJECTED:
        tally.injected[code] += 1
        return
    tally.unexpected[code] += 1
    since = min((time.monotonic() - at for at in tally.kills if at <= time.monotonic()), default=None)
    if len(tally.notes) < 5:
        tally.notes.append(f"{code}: {message} ({'no kill yet' if since is None else f'{since:.0f} s after a kill'})")


def _near_kill(tally: Tally, window_s: float = 15.0) -> bool:
    now = time.monotonic()
    return any(0 <= now - at <= window_s for at in tally.kills)


async def traffic(
    base: str, streams: int, until: float, tally: Tally, abandon_share: float, max_tokens: int, drain_s: float = 20.0
) -> None:
    """`streams` lanes, each starting one stream after another until `until`. Streams still running `drain_s` later
    (a queue longer than the machine can serve in that time) are hung up on, as clients that gave up would: the run
    ends in bounded time, and those hang-ups are one more disconnect herd must clean up after."""
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits, trust_env=False) as client:

        async def lane() -> None:
            while time.monotonic() < until:
                await one_stream(client, tally, abandon_share, max_tokens)

        lanes = [asyncio.create_task(lane()) for _ in range(streams)]
        done, pending = await asyncio.wait(lanes, timeout=max(0.0, until - time.monotonic()) + drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        tally.hung_up_at_end += len(pending)
        for task in done:
            if task.exception() is not None:
                tally.unexpected[f"client {type(task.exception()).__name__}"] += 1


async def killer(serve_pid: int, every_s: float, until: float, tally: Tally) -> None:
    while time.monotonic() + every_s < until:
        await asyncio.sleep(every_s)
        pid = child_pid(serve_pid, "worker")
        if pid is not None:
            tally.kills.append(time.monotonic())
            os.kill(pid, signal.SIGKILL)


def settle(base: str, url: str, api: int, seconds: float = 30.0) -> tuple[tuple[int, int], tuple[set[bytes], int]]:
    """Figures once the fleet is quiet again (ready, no request records left), or after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready = httpx.get(f"{base}/readyz?workers=1", timeout=5, trust_env=False).status_code == 200
        client = redis.Redis.from_url(url)
        pending = sum(1 for _ in client.scan_iter(match="herd:request:*"))
        client.close()
        if ready and not pending:
            break
        time.sleep(1)
    time.sleep(IDLE_S + 2)  # the pool's idle connections are closed by then
    return proc_figures(api), redis_figures(url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=32, help="concurrent streams")
    parser.add_argument("--kill-every", type=float, default=240.0, help="seconds between worker SIGKILLs")
    parser.add_argument("--abandon", type=float, default=0.2, help="share of streams the client hangs up on")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--redis-url", default="", help="default: a private redis-server (never a shared database)")
    parser.add_argument("--herd", default="herd")
    args = parser.parse_args()
    # A SIGTERM (timeout, Ctrl-\) unwinds like Ctrl-C, so the herd and the Redis this started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    tally = Tally()
    private = None
    if not args.redis_url:
        port = free_port()
        workdir = tempfile.mkdtemp()
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
        private = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        args.redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    try:
        return soak(args, tally)
    finally:
        if private is not None:
            private.terminate()
            private.wait(timeout=10)


def soak(args: argparse.Namespace, tally: Tally) -> int:
    # Pooled Redis connections idle for IDLE_S are closed (HERD_REDIS_IDLE_S): the figures are taken once they are.
    env = {
        "HERD_QUEUE_MAX": str(args.streams * 2),
        "HERD_HTTP_MAX_CONNECTIONS": str(args.streams + 64),
        "HERD_REDIS_IDLE_S": str(IDLE_S),
    }
    redis_port = redis.Redis.from_url(args.redis_url).connection_pool.connection_kwargs["port"]
    with herd_serve("herd soak", args.herd, args.redis_url, 180, Path(tempfile.mkdtemp()), env) as (proc, base):
        api = child_pid(proc.pid, "api")
        assert api is not None, "no API child process found"
        print(f"soak: herd at {base}; warming up", flush=True)
        # The warm-up runs at the soak's own concurrency (caches and allocator arenas grow to what that load needs);
        # the baseline is taken after it, once pooled Redis connections have gone idle and been closed.
        warm = Tally()
        asyncio.run(traffic(base, args.streams, time.monotonic() + 30, warm, args.abandon, args.max_tokens, 10.0))
        (rss0, fds0), (keys0, chans0) = settle(base, args.redis_url, api)
        kinds0 = fd_kinds(api, redis_port)
        print(
            f"soak: warm-up {warm.completed} streams; baseline RSS {rss0} KiB, fds {fds0} {dict(kinds0)}, "
            f"lasting keys {len(keys0)}, channels {chans0}",
            flush=True,
        )
        started = time.monotonic()
        until = started + args.minutes * 60

        async def run() -> None:
            await asyncio.gather(
                traffic(base, args.streams, until, tally, args.abandon, args.max_tokens),
                killer(proc.pid, args.kill_every, until, tally),
            )

        asyncio.run(run())
        print(f"soak: traffic stopped after {(time.monotonic() - started) / 60:.1f} min; settling", flush=True)
        (rss1, fds1), (keys1, chans1) = settle(base, args.redis_url, api)
        kinds1 = fd_kinds(api, redis_port)
        print(f"  Redis clients by last command: {redis_clients(args.redis_url)}", flush=True)
    print(f"soak: {args.minutes:g} min, {args.streams} concurrent streams, {len(tally.kills)} worker kills")
    print(
        f"  streams completed {tally.completed}, abandoned by the client mid-stream {tally.abandoned}, "
        f"hung up on when the traffic stopped {tally.hung_up_at_end}"
    )
    print(f"  errors explained by a kill {dict(tally.injected)}, unexpected {dict(tally.unexpected)}")
    for note in tally.notes:
        print(f"    {note}")
    print(f"  API RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB, open fds {fds0} -> {fds1} ({dict(kinds1)})")
    print(f"  Redis lasting keys {len(keys0)} -> {len(keys1)}, pub/sub channels {chans0} -> {chans1}")
    new_keys = sorted(keys1 - keys0)
    if new_keys:
        print(f"  new lasting keys: {[k.decode() for k in new_keys[:20]]}")
    leaks = []
    if rss1 > rss0 * 1.05 + 8 * 1024:
        leaks.append("RSS")
    if fds1 > fds0 + 4:
        leaks.append("file descriptors")
    if len(new_keys) > 4 or chans1 > chans0:
        leaks.append("Redis keys or channels")
    if leaks or tally.unexpected:
        print(f"FAIL: {', '.join(leaks) or 'unexpected errors'}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
