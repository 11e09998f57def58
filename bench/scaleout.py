"""Scale-out benchmark (a script, not a test): throughput with 1, 2 and 3 worker processes, and what Redis costs.

For each N in --workers (default 1 2 3) the script starts a private redis-server, one `herd api` and N
`herd worker` processes for the bundled SmolLM2 model (HERD_N_THREADS=--threads each), sends --requests
non-streaming completions (max_tokens --max-tokens, temperature 0) with --concurrency in flight, and reports
requests/s, completion tokens/s, how the requests spread over the workers (from herd:stats), and the Redis
commands processed per request and per generated token (INFO stats, before and after).

Then it measures the private Redis itself: redis-benchmark (when installed) for the commands herd uses most
(SET, GET, ZADD, ZPOPMIN, PUBLISH), and a Python loop doing one herd request's Redis round trips the way the API
and a worker do them (redis-py asyncio, --loop-clients connections). From those numbers it prints how many
requests per second, and so how many GPU workers, one Redis could serve.

This machine has 2 cores shared with other work: more workers cannot add throughput here (they split the same
cores), and any other busy process skews every figure. Do not run it while tests run; run it twice and compare.

With --simulate RATE the workers have no model (`herd worker --simulate`, workers/simulated.py): each sequence gets
RATE tokens/s, so fleets of 100 workers fit here and the figures are the Redis and dispatch side alone; --busy 0.8
keeps 80 % of the fleet's slots in flight. Dispatch time is from the admission script to the worker's claim of the
request, both as Redis' MONITOR saw them; the "after the opening burst" figures leave out the first in-flight-many
requests by admission (the load starts them all at once), so give --requests well above the in-flight count.

With --fleet-procs P (and --simulate) the N simulated workers run in P processes instead of N (bench/fleet.py: each
hosts about N/P workers built as `herd worker --simulate` builds one, in one event loop; each keeps its own worker id,
heartbeat, queue and Redis connections, and the API chooses among them as among processes). 100 worker processes on
2 cores measure the OS scheduler as much as herd: a woken worker waits for a core, and that wait lands in the
dispatch p99. With P at or below the cores, what is left is the protocol's cost (and the host's event loop, which a
burst of announcements to its workers shares). The output's "in P process(es)" and the JSON's worker_processes say
which way a row was run.

With --followup N it runs the follow-up row instead (bench/followup.py): N two-turn conversations with a long first
turn on real workers, which worker served each turn, and the follow-up's TTFT against a 1-worker fleet's.

Every process it starts (Redis, the API, the workers) is in a process group of its own that ends with the script:
on a normal exit, an exception, Ctrl-C or SIGTERM (ProcessGroup; tests/test_bench_processes.py).

Usage (from the repo root): .venv/bin/python -m bench.scaleout [--workers 1 2 3] [--requests 48] [--json out.json]
    .venv/bin/python -m bench.scaleout --followup 6 --workers 1 3
    .venv/bin/python -m bench.scaleout --simulate 20 --max-seqs 2 --busy 0.8 --max-tokens 48 --workers 1 3 20 100
    (the same with --fleet-procs 2 added: the simulated workers in 2 processes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis
from herd import channels

try:
    from bench import dispatchtrace, followup
    from bench.common import free_port
except ModuleNotFoundError as exc:  # `python bench/scaleout.py` puts bench/ on the path, not the repository
    if exc.name != "bench":
        raise
    sys.exit("run it from the repository root as a module: python -m bench.scaleout ...")

MODEL = "smollm2:135m"
REPO = Path(__file__).resolve().parents[1]  # the workers' working directory: bench.fleet is imported from it
PROMPT = "Write a short story about a lighthouse keeper:"


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGTERM when this script dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ProcessGroup:
    """Processes started in one process group of their own, ended together: SIGTERM to the whole group,
    SIGKILL to whatever is left after the grace period. Used as a context manager, so the group ends on a normal exit,
    on an exception and on SIGINT/SIGTERM (main turns SIGTERM into SystemExit); a second signal during the clean-up is
    held back until it is done. The children are not in this script's group, so a terminal's Ctrl-C reaches only the
    script, which then ends them itself; and they get SIGTERM from the kernel should the script be killed outright."""

    def __init__(self, grace_s: float = 40) -> None:
        self.grace_s = grace_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pgid: int | None = None

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # the first process leads a new group (in this session: setpgid cannot join a group of another session)
        kwargs["process_group"] = 0 if self.pgid is None else self.pgid
        proc: subprocess.Popen[bytes] = subprocess.Popen(cmd, preexec_fn=_die_with_parent, **kwargs)
        if self.pgid is None:
            self.pgid = proc.pid
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        if self.pgid is None:
            return
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            with contextlib.suppress(subprocess.TimeoutExpired):
                for proc in self.procs:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # what is left, and anything they started themselves
                os.killpg(self.pgid, signal.SIGKILL)
            for proc in self.procs:
                proc.wait()
            self.pgid = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(group: ProcessGroup, workdir: Path) -> int:
    port = free_port()
    group.start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            if client.ping():
                client.close()
                return port
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def worker_commands(
    n_workers: int, simulate: float, fleet_procs: int = 0, lag_dir: Path | None = None
) -> list[list[str]]:
    """The workers' command lines: one `herd worker` each, or with simulate and fleet_procs P, min(P, n_workers)
    processes of bench.fleet hosting n_workers simulated workers between them (spread as evenly as they go), each
    sampling its event loop's lag into lag_dir/lag<i>.txt when lag_dir is given."""
    worker = [sys.executable, "-m", "herd", "worker", "--model", MODEL]
    if not simulate:
        return [worker] * n_workers
    # no model: tokens at this rate (workers/simulated.py), so 100 workers fit here
    if not fleet_procs:
        return [[*worker, "--simulate", str(simulate)]] * n_workers
    procs = min(fleet_procs, n_workers)
    sizes = [n_workers // procs + (i < n_workers % procs) for i in range(procs)]
    host = [sys.executable, "-m", "bench.fleet", "--model", MODEL, "--simulate", str(simulate), "--workers"]
    lag = [[] if lag_dir is None else ["--lag-file", str(lag_dir / f"lag{i}.txt")] for i in range(procs)]
    return [[*host, str(size), *lag[i]] for i, size in enumerate(sizes)]


def start_fleet(
    fleet: ProcessGroup, n_workers: int, redis_port: int, args: argparse.Namespace, workdir: Path
) -> tuple[list[subprocess.Popen[bytes]], str]:
    port = free_port()
    env = {
        **os.environ,
        "HERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "HERD_N_THREADS": str(args.threads),
        "HERD_MAX_SEQS": str(args.max_seqs),
        "HERD_QUEUE_MAX": "100000",
        "HERD_MODELS_DIR": str(workdir / "models"),
        "HERD_FILES_DIR": str(workdir / "files"),
        "HERD_LOG_LEVEL": "warning",
    }
    commands = [[sys.executable, "-m", "herd", "api", "--port", str(port)]]
    commands += worker_commands(n_workers, args.simulate, getattr(args, "fleet_procs", 0), workdir)
    procs = []
    for i, command in enumerate(commands):
        with (workdir / f"proc{i}.log").open("wb") as log:
            procs.append(fleet.start(command, env=env, stdout=log, stderr=log, cwd=REPO))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60 + 3 * n_workers
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a herd process exited; logs in {workdir}")
        try:
            if httpx.get(f"{base}/readyz?workers={n_workers}", timeout=5).status_code == 200:
                return procs, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the fleet did not get ready")


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def load(
    base: str, requests: int, concurrency: int, max_tokens: int, ramp_s: float = 0.0
) -> tuple[float, list[str], int]:
    """(wall seconds, request ids, completion tokens) of `requests` completions, `concurrency` at a time; with ramp_s
    the first `concurrency` start evenly over ramp_s seconds instead of all at once."""
    gate = asyncio.Semaphore(concurrency)
    ids: list[str] = []
    tokens = 0

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        async with gate:
            if i < concurrency and ramp_s:
                await asyncio.sleep(i * ramp_s / concurrency)
            body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
            resp = await http.post("/v1/completions", json=body)
            resp.raise_for_status()
            ids.append(resp.headers["x-request-id"])
            tokens += resp.json()["usage"]["completion_tokens"]

    # httpx pools 100 connections by default: more requests in flight would wait for one in the client, unseen
    limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency + 10)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one(http, i) for i in range(requests)))
        return time.perf_counter() - started, ids, tokens


def commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def measure_fleet(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    # The fleet's group ends before Redis's (the workers drain against it); both end however this function is left.
    with ProcessGroup(grace_s=10) as redis_group, ProcessGroup() as fleet:
        redis_port = start_redis(redis_group, workdir)
        if args.followup:
            return followup.measure(fleet, n, redis_port, args, workdir)
        return _measure(fleet, n, redis_port, args, workdir)


def _measure(fleet: ProcessGroup, n: int, redis_port: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    client = redis.Redis(port=redis_port)
    try:
        _, base = start_fleet(fleet, n, redis_port, args, workdir)
        # In flight: --concurrency, or with --busy a share of the fleet's slots (e.g. 0.8 of n * max_seqs).
        concurrency = max(1, round(args.busy * n * args.max_seqs)) if args.busy else args.concurrency
        requests = max(args.requests, 2 * concurrency)
        asyncio.run(load(base, concurrency, concurrency, 8))  # warm-up: first prefill, connections
        time.sleep(1.5)  # a heartbeat period, so idle-time commands are counted the same way below
        # Heartbeats, arq's polls and health checks run whether or not requests come: measure that rate alone.
        idle_before = commands_processed(client)
        time.sleep(5)
        idle_rate = (commands_processed(client) - idle_before - 1) / 5
        monitor = dispatchtrace.Monitor(redis_port, MODEL)
        before, t0, wall_t0 = commands_processed(client), time.perf_counter(), time.time()
        # --stagger: the in-flight requests start spread over one completion's length (simulated workers: max_tokens /
        # RATE), so their ends and the next starts stay spread too; otherwise they start, end and restart in waves
        ramp_s = args.max_tokens / args.simulate if args.stagger and args.simulate else 0.0
        wall, ids, tokens = asyncio.run(load(base, requests, concurrency, args.max_tokens, ramp_s))
        elapsed = time.perf_counter() - t0
        commands = commands_processed(client) - before
        monitor.stop()
        jobs = monitor.jobs(n * args.max_seqs)
        seen = sorted((j for r in ids if (j := jobs.get(r)) and j.admitted and j.started), key=lambda j: j.admitted)
        times = [(j.started - j.admitted) * 1000 for j in seen]
        # the load's opening burst (every request in flight admitted at once) is left out of the steady figures
        dispatch, steady = sorted(times), sorted(times[concurrency:])
        breakdown = dispatchtrace.breakdown(jobs, ids, monitor.trace)
        lag = dispatchtrace.loop_lag(sorted(workdir.glob("lag*.txt")), wall_t0, time.time())
        spread = Counter()
        for rid in ids:
            raw = client.get(channels.stats(rid))
            spread[json.loads(raw)["worker_id"] if raw else "?"] += 1
        per_request = max(0.0, commands - idle_rate * elapsed) / len(ids)
        return {
            "workers": n,
            "simulate_tokens_per_s": args.simulate,
            "worker_processes": min(args.fleet_procs, n) if args.fleet_procs else n,
            "in_flight": concurrency,
            "staggered_over_s": ramp_s,
            "dispatch_ms_p50": round(percentile(dispatch, 0.5), 2),
            "dispatch_ms_p99": round(percentile(dispatch, 0.99), 2),
            "dispatch_ms_p50_steady": round(percentile(steady, 0.5), 2),  # after the opening burst
            "dispatch_ms_p99_steady": round(percentile(steady, 0.99), 2),
            "requests": len(ids),
            "wall_s": round(wall, 2),
            "requests_per_s": round(len(ids) / wall, 2),
            "tokens_per_s": round(tokens / wall, 1),
            "spread": sorted(spread.values(), reverse=True),
            "redis_commands": commands,
            "redis_commands_idle_per_s": round(idle_rate, 1),
            "redis_commands_idle_per_worker_s": round(idle_rate / n, 1),
            "redis_commands_per_request": round(per_request, 1),
            "redis_commands_per_token": round(per_request * len(ids) / max(tokens, 1), 2),
            "dispatch_breakdown": dispatchtrace.summary(breakdown),
            "host_loop_lag": lag,
            "_breakdown_lines": dispatchtrace.format_breakdown(breakdown),
        }
    finally:
        client.close()


def redis_benchmark(port: int) -> dict[str, float]:
    """redis-benchmark's requests/s for single commands (50 clients), without and with pipelining (-P 16)."""
    if shutil.which("redis-benchmark") is None:
        return {}
    found: dict[str, float] = {}
    for pipeline in ("1", "16"):
        out = subprocess.run(
            ["redis-benchmark", "-p", str(port), "-q", "-n", "100000", "-P", pipeline, "-t", "set,get,zadd,zpopmin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out += subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(port),
                "-q",
                "-n",
                "100000",
                "-P",
                pipeline,
                "PUBLISH",
                "herd:events:x",
                "tok",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.replace("\r", "\n").splitlines():
            match = re.match(r"\s*(\S+).*?: ([0-9.]+) requests per second", line)
            if match:
                found[f"{match.group(1).upper()} P{pipeline}"] = float(match.group(2))
    return found


async def herd_like_loop(port: int, clients: int, seconds: float) -> float:
    """Requests/s of a loop doing one request's Redis round trips as herd does them (tokens left out):
    API: store + queue depth (pipeline), enqueue (SET job + ZADD), announce (PUBLISH); worker: claim (pipeline
    SET NX + GET + EXISTS), in-progress SET, end: stats SET + DEL job + ZREM + DEL in-progress."""
    import redis.asyncio

    done = 0
    stop_at = time.perf_counter() + seconds

    async def run(i: int) -> None:
        nonlocal done
        r = redis.asyncio.Redis(port=port)
        n = 0
        while time.perf_counter() < stop_at:
            rid = f"{i}-{n}"
            n += 1
            async with r.pipeline(transaction=False) as p:
                p.set(f"herd:request:{rid}", b"x" * 600, ex=3600)
                p.zcard("herd:queue:m")
                await p.execute()
            async with r.pipeline(transaction=True) as p:
                p.psetex(f"arq:job:{rid}", 300000, b"j" * 120)
                p.zadd("herd:queue:m", {rid: time.time() * 1000})
                await p.execute()
            await r.publish("herd:announce:m", rid)
            async with r.pipeline(transaction=False) as p:
                p.set(f"herd:started:{rid}", b"w", nx=True, ex=3600)
                p.get(f"herd:request:{rid}")
                p.exists(f"herd:cancelled:{rid}")
                await p.execute()
            await r.set(f"arq:in-progress:{rid}", b"1", px=300000)
            async with r.pipeline(transaction=False) as p:
                p.set(f"herd:stats:{rid}", b"s" * 150, ex=3600)
                p.delete(f"arq:job:{rid}", f"arq:in-progress:{rid}")
                p.zrem("herd:queue:m", rid)
                await p.execute()
            done += 1
        await r.aclose()

    await asyncio.gather(*(run(i) for i in range(clients)))
    return done / seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="HERD_N_THREADS of each worker")
    p.add_argument("--max-seqs", type=int, default=8, help="HERD_MAX_SEQS of each worker")
    p.add_argument("--simulate", type=float, default=0.0, help="tokens/s of simulated workers (0: the real model)")
    p.add_argument(
        "--fleet-procs",
        type=int,
        default=0,
        help="with --simulate: host the N workers in this many processes (bench/fleet.py; 0: one process each)",
    )
    p.add_argument("--busy", type=float, default=0.0, help="in flight as a share of all slots (0: --concurrency)")
    p.add_argument(
        "--stagger",
        action="store_true",
        help="with --simulate: start the in-flight requests spread over one completion's length, not all at once "
        "(completions of one length then end and restart in waves of the whole in-flight count)",
    )
    p.add_argument("--loop-clients", type=int, default=16)
    p.add_argument("--loop-seconds", type=float, default=5.0)
    p.add_argument("--followup", type=int, default=0, help="N conversations of two turns instead (bench/followup.py)")
    p.add_argument("--followup-tokens", type=int, default=16, help="max_tokens of each --followup turn")
    p.add_argument("--json", type=Path)
    p.add_argument("--logs", type=Path, help="keep the processes' logs in this (new) directory")
    args = p.parse_args(argv)
    if args.fleet_procs and not args.simulate:
        p.error("--fleet-procs hosts simulated workers: it needs --simulate")
    return args


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C's KeyboardInterrupt: every ProcessGroup ends its processes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    report: dict[str, Any] = {"cpus": os.cpu_count(), "fleet": [], "redis": {}}
    with contextlib.ExitStack() as stack:
        tmp = str(args.logs) if args.logs else stack.enter_context(tempfile.TemporaryDirectory(prefix="herd-scaleout-"))
        for n in args.workers:
            workdir = Path(tmp) / f"n{n}"
            workdir.mkdir(parents=True)
            row = measure_fleet(n, args, workdir)
            report["fleet"].append(row)
            if args.followup:
                continue
            print(
                f"{n} worker(s) in {row['worker_processes']} process(es): {row['requests_per_s']:6.2f} req/s "
                f"{row['tokens_per_s']:7.1f} tok/s "
                f"spread {row['spread']}  Redis: {row['redis_commands_per_request']} cmds/request, "
                f"{row['redis_commands_per_token']} cmds/token, {row['redis_commands_idle_per_s']} cmds/s idle "
                f"({row['redis_commands_idle_per_worker_s']}/worker); {row['in_flight']} in flight, dispatch "
                f"p50 {row['dispatch_ms_p50']} ms p99 {row['dispatch_ms_p99']} ms (after the opening burst: p50 "
                f"{row['dispatch_ms_p50_steady']} ms p99 {row['dispatch_ms_p99_steady']} ms)",
                flush=True,
            )
            for line in row.pop("_breakdown_lines"):
                print(line, flush=True)
            for kind, what in (("lag", "event-loop lag (10 ms sleeps)"), ("rtt", "Redis PING round trip")):
                if kind in row["host_loop_lag"]:
                    x = row["host_loop_lag"][kind]
                    print(
                        f"  fleet hosts' {what}, {x['samples']} samples: p50 {x['p50_ms']} ms p99 {x['p99_ms']} ms "
                        f"max {x['max_ms']} ms",
                        flush=True,
                    )
        if args.followup:
            followup.report(report["fleet"])
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))
            return 0
        with ProcessGroup(grace_s=10) as redis_group:
            port = start_redis(redis_group, Path(tmp))
            bench = redis_benchmark(port)
            loop_rps = asyncio.run(herd_like_loop(port, args.loop_clients, args.loop_seconds))
    report["redis"] = {"redis_benchmark_rps": bench, "herd_like_requests_per_s": round(loop_rps, 1)}
    for name, rps in bench.items():
        print(f"redis-benchmark {name:14s} {rps:10.0f} ops/s")
    print(f"herd-like request loop ({args.loop_clients} clients, Python): {loop_rps:.0f} requests/s of Redis work")
    per_token = max((r["redis_commands_per_token"] for r in report["fleet"]), default=0.0)
    per_request = max((r["redis_commands_per_request"] for r in report["fleet"]), default=0.0)
    publish = bench.get("PUBLISH P1")
    if publish and per_request:
        print(
            f"one Redis core at {publish:.0f} single commands/s and {per_request} commands per request "
            f"({per_token} per token) sustains about {publish / per_request:.0f} requests/s or "
            f"{publish / max(per_token, 0.01):.0f} streamed tokens/s before Redis is the limit"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
