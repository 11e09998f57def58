"""Soak: a `herd serve` on loopback under many concurrent streams for a bounded time, a share of them abandoned
mid-stream by their client and the worker SIGKILLed every few minutes (the supervisor restarts it). Afterwards, with
the traffic stopped, the API's RSS and open file descriptors, Redis' keys and pub/sub channels must be back near the
baseline taken after warm-up, and the only errors must be the injected ones (worker_lost / unavailable around a kill).

    python -m bench.soak --minutes 20 --streams 200          # the README's run
    python -m bench.soak --minutes 1 --streams 24            # a quick check

Not part of the test suite (it runs for minutes). Exit status 1 when a leak or an unexpected error is found.
"""

from __future__ import annotations

import argparse
import asyncio
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


@dataclass
class Tally:
    completed: int = 0
    abandoned: int = 0  # the client hung up on purpose
    injected: Counter[str] = field(default_factory=Counter)  # errors a worker kill explains
    unexpected: Counter[str] = field(default_factory=Counter)
    kills: list[float] = field(default_factory=list)  # monotonic times of the worker kills


def proc_figures(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


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


def redis_figures(url: str) -> tuple[int, int]:
    """(keys that never expire plus request records, pub/sub channels with a subscriber). Keys with a TTL (per-request
    stats, heartbeats) are bounded by time rather than by traffic, so they are not counted."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(count=1000))
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
            ttls = pipe.execute()
        lasting = sum(1 for key, ttl in zip(keys, ttls, strict=True) if ttl == -1 or key.startswith(b"herd:request:"))
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
                code = (json.loads(await answer.aread()).get("error") or {}).get("code") or str(answer.status_code)
                (tally.injected if _near_kill(tally) and code in INJECTED else tally.unexpected)[code] += 1
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
                    code = frame["error"].get("code") or "error"
                    (tally.injected if _near_kill(tally) and code in INJECTED else tally.unexpected)[code] += 1
                    return
                frames += 1
                if abandon_after is not None and frames >= abandon_after:
                    tally.abandoned += 1
                    return  # leaving the block closes the connection mid-stream
            tally.unexpected["cut without [DONE]"] += 1
    except httpx.HTTPError as exc:
        tally.unexpected[type(exc).__name__] += 1


def _near_kill(tally: Tally, window_s: float = 15.0) -> bool:
    now = time.monotonic()
    return any(0 <= now - at <= window_s for at in tally.kills)


async def traffic(base: str, streams: int, until: float, tally: Tally, abandon_share: float, max_tokens: int) -> None:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits, trust_env=False) as client:

        async def lane() -> None:
            while time.monotonic() < until:
                await one_stream(client, tally, abandon_share, max_tokens)

        await asyncio.gather(*(lane() for _ in range(streams)))


async def killer(serve_pid: int, every_s: float, until: float, tally: Tally) -> None:
    while time.monotonic() + every_s < until:
        await asyncio.sleep(every_s)
        pid = child_pid(serve_pid, "worker")
        if pid is not None:
            tally.kills.append(time.monotonic())
            os.kill(pid, signal.SIGKILL)


def settle(base: str, url: str, api: int, seconds: float = 30.0) -> tuple[tuple[int, int], tuple[int, int]]:
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
    return proc_figures(api), redis_figures(url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams")
    parser.add_argument("--kill-every", type=float, default=240.0, help="seconds between worker SIGKILLs")
    parser.add_argument("--abandon", type=float, default=0.1, help="share of streams the client hangs up on")
    parser.add_argument("--max-tokens", type=int, default=24)
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
    env = {"HERD_QUEUE_MAX": str(args.streams * 2), "HERD_HTTP_MAX_CONNECTIONS": str(args.streams + 64)}
    with herd_serve("herd soak", args.herd, args.redis_url, 180, Path(tempfile.mkdtemp()), env) as (proc, base):
        api = child_pid(proc.pid, "api")
        assert api is not None, "no API child process found"
        print(f"soak: herd at {base}; warming up", flush=True)
        asyncio.run(traffic(base, 8, time.monotonic() + 20, Tally(), 0.0, args.max_tokens))  # warm-up
        (rss0, fds0), (keys0, chans0) = settle(base, args.redis_url, api)
        print(f"soak: baseline RSS {rss0} KiB, fds {fds0}, keys {keys0}, channels {chans0}", flush=True)
        started = time.monotonic()
        until = started + args.minutes * 60

        async def run() -> None:
            await asyncio.gather(
                traffic(base, args.streams, until, tally, args.abandon, args.max_tokens),
                killer(proc.pid, args.kill_every, until, tally),
            )

        asyncio.run(run())
        (rss1, fds1), (keys1, chans1) = settle(base, args.redis_url, api)
    print(f"soak: {args.minutes:g} min, {args.streams} concurrent streams, {len(tally.kills)} worker kills")
    print(f"  streams completed {tally.completed}, abandoned by the client {tally.abandoned}")
    print(f"  errors explained by a kill {dict(tally.injected)}, unexpected {dict(tally.unexpected)}")
    print(f"  API RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB, open fds {fds0} -> {fds1}")
    print(f"  Redis lasting keys {keys0} -> {keys1}, pub/sub channels {chans0} -> {chans1}")
    leaks = []
    if rss1 > rss0 * 1.05 + 8 * 1024:
        leaks.append("RSS")
    if fds1 > fds0 + 4:
        leaks.append("file descriptors")
    if keys1 > keys0 + 4 or chans1 > chans0:
        leaks.append("Redis keys or channels")
    if leaks or tally.unexpected:
        print(f"FAIL: {', '.join(leaks) or 'unexpected errors'}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
