"""What an idle fleet costs Redis (a script, not a test): commands per worker per second, by command.

For each N in --workers (default 1 10) it starts a private redis-server and N simulated workers (`herd worker
--simulate`, workers/simulated.py: no model) and, with --api, one `herd api`; waits until every worker is in the
registry of live workers and a few heartbeats have passed; resets Redis' statistics (CONFIG RESETSTAT); sends no
request for --seconds; then reads INFO commandstats. Redis counts the commands a Lua script runs one by one besides
the EVALSHA itself, so a script's cost is its whole content. Prints the per-command calls per worker per second.

Usage (from the repo root): .venv/bin/python -m bench.idle [--workers 1 10] [--seconds 20] [--api] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from herd import registry

from bench.common import free_port
from bench.scaleout import MODEL, ProcessGroup, exit_on_sigterm, start_redis


def idle_fleet(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with ProcessGroup(grace_s=10) as redis_group, ProcessGroup() as fleet:
        redis_port = start_redis(redis_group, workdir)
        client = redis.Redis(port=redis_port)
        env = {
            **os.environ,
            "HERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "HERD_MODELS_DIR": str(workdir / "models"),
            "HERD_FILES_DIR": str(workdir / "files"),
            "HERD_LOG_LEVEL": "warning",
        }
        argvs = [["worker", "--model", MODEL, "--simulate", "20"]] * n
        api_port = free_port()
        if args.api:
            argvs.append(["api", "--port", str(api_port)])
        for i, argv in enumerate(argvs):
            with (workdir / f"proc{i}.log").open("wb") as log:
                fleet.start([sys.executable, "-m", "herd", *argv], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60 + 3 * n
        while len(registry.live_sync(client)) < n:
            if time.monotonic() > deadline or any(p.poll() is not None for p in fleet.procs):
                raise RuntimeError(f"the fleet did not start; logs in {workdir}")
            time.sleep(0.5)
        if args.api:  # its first request is not idle work: make it before the count starts
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=5).status_code == 200:
                        break
                time.sleep(0.5)
        time.sleep(args.settle)
        client.config_resetstat()
        started = time.monotonic()
        time.sleep(args.seconds)
        stats = client.info("commandstats")
        elapsed = time.monotonic() - started
        total = int(client.info("stats")["total_commands_processed"])
        client.close()
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls.pop("info", None)  # this script's own reads
    calls.pop("config|resetstat", None)
    per_worker_s = {k: round(v / n / elapsed, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
    return {
        "workers": n,
        "api": args.api,
        "seconds": round(elapsed, 1),
        "commands_per_worker_s": round(sum(calls.values()) / n / elapsed, 2),
        "total_commands_processed_per_worker_s": round(total / n / elapsed, 2),
        "by_command_per_worker_s": per_worker_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 10])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=6.0, help="seconds after the fleet is up before counting")
    p.add_argument("--api", action="store_true", help="run one `herd api` too (its idle work counts in the total)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    rows = []
    with tempfile.TemporaryDirectory(prefix="herd-idle-") as tmp:
        for n in args.workers:
            workdir = Path(tmp) / f"n{n}"
            workdir.mkdir()
            row = idle_fleet(n, args, workdir)
            rows.append(row)
            by = ", ".join(f"{k} {v}" for k, v in row["by_command_per_worker_s"].items())
            print(f"{n} idle worker(s){' + api' if args.api else ''}: {row['commands_per_worker_s']} cmds/worker/s")
            print(f"  ({by})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
