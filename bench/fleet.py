"""BENCHMARK AND TEST ONLY: one process hosting N simulated workers, so a fleet of 100 costs a few processes, not 100.

`python -m bench.fleet --workers N --simulate RATE [--model NAME]` builds N workers exactly as `herd worker --simulate
RATE` builds one (herd.workers.jobs.build_worker with a SimulatedEngine: no model), and runs them in one event loop.
Each is a worker of its own to the API and to Redis: its own worker id, heartbeat, queue, announcement channel,
Redis connection pool, engine thread and slots; the API chooses among them as among processes. What they share is
the process: one event loop, one GIL, one pid (their heartbeats show the same pid and host).

So bench/scaleout.py --fleet-procs P can measure the protocol's dispatch time at 100 workers without 100 Python
processes taking turns on 2 cores. It is not a deployment mode: a real worker holds a model and is a process.

SIGTERM or SIGINT stops every hosted worker the way `herd worker` stops on SIGTERM (no new jobs, waiting ones handed
back, running ones finish within HERD_DRAIN_TIMEOUT_S); the process exits once all have closed. A worker that fails
(at start-up or later) stops the others, and the process exits with status 1. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import sys
import time
from pathlib import Path

from herd import logs, redisconn, supervisor
from herd.config import ModelConfig, Settings, load_settings
from herd.workers.jobs import HerdWorker, build_worker

log = logging.getLogger("herd.bench.fleet")


def build_fleet(settings: Settings, model_name: str, n: int, tokens_per_s: float) -> list[HerdWorker]:
    """N simulated workers of `model_name`, built as `herd worker --simulate` builds one (supervisor.run_worker).
    Call it with the event loop that will run them set as the current one: arq's Worker binds to it."""
    fake = ModelConfig(name=model_name, path="", n_ctx=settings.n_ctx)
    return [build_worker(settings, fake, simulate_tokens_per_s=tokens_per_s) for _ in range(n)]


async def sample_lag(path: Path, settings: Settings, period_s: float = 0.01, ping_every: int = 10) -> None:
    """The event loop's lag: how late a `period_s` sleep wakes (every hosted worker's Redis replies, announcements and
    decode steps wait that long for their turn), and every `ping_every` samples a Redis PING's round trip as this loop
    sees it (a worker's start of a job is several such round trips). One line per sample, `time.time() lag|rtt ms`,
    written once a second."""
    lines: list[str] = []
    flushed = time.monotonic()
    client = redisconn.async_client(settings)
    try:
        with path.open("a") as out:
            for n in itertools.count():
                before = time.perf_counter()
                await asyncio.sleep(period_s)
                lines.append(f"{time.time():.3f} lag {(time.perf_counter() - before - period_s) * 1000:.2f}\n")
                if n % ping_every == 0:
                    before = time.perf_counter()
                    await client.ping()
                    lines.append(f"{time.time():.3f} rtt {(time.perf_counter() - before) * 1000:.2f}\n")
                if time.monotonic() - flushed >= 1:
                    out.writelines(lines)
                    out.flush()
                    lines, flushed = [], time.monotonic()
    finally:
        await client.aclose()


async def host(workers: list[HerdWorker], lag_file: Path | None = None, settings: Settings | None = None) -> int:
    """Run them all until a signal (or a failure) stops them; 0 when every one ended cleanly."""
    loop = asyncio.get_running_loop()
    sampler = None if lag_file is None or settings is None else asyncio.create_task(sample_lag(lag_file, settings))

    def stop(signum: signal.Signals) -> None:
        for worker in workers:
            if worker.allow_pick_jobs:  # once each: arq's handler starts a drain per call
                worker.handle_sig_wait_for_completion(signum)

    # Each Worker registered its own SIGINT/SIGTERM handler on this loop, each replacing the last: one handler for all.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)

    async def serve(worker: HerdWorker) -> bool:
        failed = False
        try:
            with contextlib.suppress(asyncio.CancelledError):  # the end of arq's drain cancels its main task
                await worker.async_run()
        except Exception:
            log.exception("a hosted worker failed; stopping the others")
            failed = True
            stop(signal.SIGTERM)
        try:
            await worker.close()  # as Worker.run does: on_shutdown (hand back, heartbeat removed), then the pool
        except Exception:  # e.g. Redis gone: the others still close
            log.exception("a hosted worker did not close cleanly")
            failed = True
        return not failed

    clean = await asyncio.gather(*(serve(worker) for worker in workers))
    if sampler is not None:
        sampler.cancel()
    return 0 if all(clean) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, required=True, help="simulated workers in this process")
    p.add_argument("--simulate", type=float, required=True, metavar="TOKENS_PER_S", help="as `herd worker --simulate`")
    p.add_argument("--model", help="model name they serve (default: the first configured)")
    p.add_argument("--lag-file", type=Path, help="sample the event loop's lag into this file (bench.scaleout)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.simulate <= 0:
        p.error("--workers and --simulate must be positive")
    settings = load_settings()
    logs.setup(settings.log_level, settings.log_format)
    supervisor.check_redis("worker", settings, wait_s=10.0)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        workers = build_fleet(settings, args.model or settings.models[0].name, args.workers, args.simulate)
        return loop.run_until_complete(host(workers, args.lag_file, settings))
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
