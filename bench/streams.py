"""Open streams one API process holds (issue 18): a script, not a test.

Starts a private redis-server, one `herd api` and --workers simulated workers (`herd worker --simulate RATE`, no
model: every sequence gets RATE tokens/s; workers/simulated.py) with enough slots for every stream, then opens
streaming completions in steps (--steps, e.g. 10 500 1000 2000 concurrent streams), each --tokens tokens long,
all held open at once. For each step it reports:

- how many streams completed and how many failed;
- the API process' RSS and open file descriptors at the peak (all streams open) and after, and RSS per stream
  above the idle baseline;
- the gaps between a stream's tokens as the client saw them, p50 / p99, and the p99 *added* over the simulated
  token interval (1/RATE): what the API and Redis add to inter-token latency at that many streams.

The client is raw asyncio sockets (HTTP/1.1, one connection per stream) so that the client, not the server, is not
the bottleneck. This machine has 2 cores shared by the client, the API, Redis and the simulated workers: the
figures are an upper bound of the API's cost here. Do not run it while tests run.

Usage (from the repo root):
    .venv/bin/python -m bench.streams --steps 10 500 1000 2000 --workers 20 --rate 4 --tokens 60 --ramp 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from bench.common import percentile
    from bench.scaleout import MODEL, ProcessGroup, exit_on_sigterm, start_fleet, start_redis
except ModuleNotFoundError as exc:  # `python bench/streams.py` puts bench/ on the path, not the repository
    if exc.name != "bench":
        raise
    sys.exit("run it from the repository root as a module: python -m bench.streams ...")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(group: ProcessGroup, args: argparse.Namespace, workdir: Path) -> tuple[int, int]:
    """The fleet, with a slot for every stream of the largest step; returns (API port, API pid)."""
    os.environ["HERD_HTTP_MAX_CONNECTIONS"] = str(max(args.steps) + 256)  # the fleet's environment is ours
    # A simulated decode call costs a whole step, so admitting prompts one call each would stall every stream for
    # seconds while a step of thousands ramps up: pack them (HERD_PREFILL_PACK) as llama-server would.
    os.environ["HERD_PREFILL_PACK"] = "1"
    slots = -(-max(args.steps) // args.workers)
    fleet = argparse.Namespace(threads=1, max_seqs=slots, simulate=args.rate, fleet_procs=args.fleet_procs)
    procs, base = start_fleet(group, args.workers, start_redis(group, workdir), fleet, workdir)
    return int(base.rsplit(":", 1)[1]), procs[0].pid


@dataclass
class Step:
    """One step's streams: the gaps between tokens counted once every stream runs (`steady`), since a simulated
    worker spends a whole step on each prompt it admits, which stalls the others while the step ramps up."""

    streams: int
    gaps: list[float] = field(default_factory=list)
    started: int = 0
    all_started: asyncio.Event = field(default_factory=asyncio.Event)
    steady: float = float("inf")

    def first_token(self) -> None:
        self.started += 1
        if self.started == self.streams:
            self.all_started.set()


async def one_stream(port: int, tokens: int, step: Step) -> bool:
    """One streaming completion over a raw socket; True when it ended in [DONE] with `tokens` tokens."""
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": tokens, "stream": True}).encode()
    head = (  # HTTP/1.0: the body is not chunked, so every line read is a line of the event stream
        f"POST /v1/completions HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(head + body)
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            return False
        seen, last = 0, None
        while line := await reader.readline():
            if line.startswith(b"data: [DONE]"):
                return seen == tokens
            if line.startswith(b"data: {") and b'"finish_reason":null' in line:  # a token (not the last chunk)
                now = time.perf_counter()
                if last is None:
                    step.first_token()
                elif last >= step.steady:
                    step.gaps.append(now - last)
                last = now
                seen += 1
        return False
    except OSError:
        return False
    finally:
        writer.close()


async def run_step(n: int, args: argparse.Namespace, port: int, api_pid: int) -> dict[str, Any]:
    step = Step(n)
    tasks = []
    for _ in range(n):  # ramp over --ramp seconds so the connects do not all land in one instant
        tasks.append(asyncio.create_task(one_stream(port, args.tokens, step)))
        if args.ramp > 0 and n > 1:
            await asyncio.sleep(args.ramp / n)
    # The peak: every stream has its first token, most of their tokens still to come (or some failed).
    everyone = asyncio.create_task(step.all_started.wait())
    finished = asyncio.ensure_future(asyncio.gather(*tasks))
    waiting: list[asyncio.Future[Any]] = [everyone, finished]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)  # all finished first: some failed
    everyone.cancel()
    step.steady = time.perf_counter()
    peak_rss, peak_fds = proc_rss_mib(api_pid), proc_fds(api_pid)
    results = await finished
    await asyncio.sleep(2.0)
    interval = 1.0 / args.rate
    gaps = step.gaps
    p99 = percentile(gaps, 99)
    return {
        "streams": n,
        "ok": sum(results),
        "failed": n - sum(results),
        "peak_rss_mib": peak_rss,
        "peak_fds": peak_fds,
        "after_rss_mib": proc_rss_mib(api_pid),
        "after_fds": proc_fds(api_pid),
        "gap_p50_ms": (percentile(gaps, 50) or 0) * 1000,
        "gap_p99_ms": (p99 or 0) * 1000,
        "added_p99_ms": ((p99 or 0) - interval) * 1000,
    }


async def measure(args: argparse.Namespace, port: int, api_pid: int) -> tuple[float, list[dict[str, Any]]]:
    await run_step(4, args, port, api_pid)  # warm-up
    await asyncio.sleep(1.0)
    idle = proc_rss_mib(api_pid)
    return idle, [await run_step(n, args, port, api_pid) for n in args.steps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 500, 1000, 2000])
    parser.add_argument("--workers", type=int, default=10, help="simulated workers (their slots cover every stream)")
    parser.add_argument("--rate", type=float, default=2.0, help="tokens/s of every simulated sequence")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per stream (outlasting --ramp well)")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which a step's streams are opened")
    parser.add_argument(
        "--fleet-procs", type=int, default=2, help="processes hosting the simulated workers (0: one each)"
    )
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # the fleet's group ends with the script
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * max(args.steps) + 1024)), hard))
    with tempfile.TemporaryDirectory(prefix="herd-streams-") as tmp, ProcessGroup() as group:
        port, api_pid = start(group, args, Path(tmp))
        idle, rows = asyncio.run(measure(args, port, api_pid))
    print(f"API idle RSS {idle:.1f} MiB; {args.workers} simulated workers at {args.rate:g} tokens/s per sequence, "
          f"{args.tokens} tokens per stream")  # fmt: skip
    print(f"{'streams':>8} {'ok':>6} {'failed':>6} {'peak RSS':>9} {'KiB/stream':>10} {'peak fds':>8} "
          f"{'after RSS':>9} {'gap p50':>8} {'gap p99':>8} {'added p99':>9}")  # fmt: skip
    for r in rows:
        per_stream = (r["peak_rss_mib"] - idle) * 1024 / r["streams"]
        print(
            f"{r['streams']:>8} {r['ok']:>6} {r['failed']:>6} {r['peak_rss_mib']:>8.1f}M {per_stream:>10.1f} "
            f"{r['peak_fds']:>8} {r['after_rss_mib']:>8.1f}M {r['gap_p50_ms']:>7.0f}ms {r['gap_p99_ms']:>7.0f}ms "
            f"{r['added_p99_ms']:>8.0f}ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "idle_rss_mib": idle, "rows": rows}, indent=2))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
