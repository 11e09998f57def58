"""Side-by-side streaming benchmark: herd vs in-process llama-cpp-python vs llama.cpp's own llama-server.

One run on this machine measures greedy (temperature 0) streaming generation with a fixed ``max_tokens`` for:

(a) ``herd``: the script starts ``herd serve --host 127.0.0.1 --port <free>`` itself, with
    ``HERD_REDIS_URL=redis://127.0.0.1:6379/14`` (that Redis db is flushed first), waits for ``GET /readyz == 200``
    and sends OpenAI streaming requests to ``POST /v1/completions``;
(b) ``in-process``: the same GGUF through ``llama_cpp.Llama(...).create_completion(stream=True)`` in this process,
    concurrency 1 only (it cannot batch): the baseline for the time to first token that the gateway adds;
(c) ``llama-server -np 1`` and ``llama-server -np 8`` (only with ``--llama-server PATH``): started by the script with
    ``-m MODEL -c <2048*np> -np <np> -t 2 --host 127.0.0.1 --port <free>`` and hit on its ``/v1/completions``.

Servers are started, measured and stopped one at a time (never two at once). Client load, with httpx on 127.0.0.1:
concurrency 1 (``--requests`` sequential streams) and concurrency 8 (8 simultaneous streams, ``--rounds`` rounds).
Every system gets the same 8 prompts (SmolLM2 ChatML, asking for long stories so that generation runs to
``max_tokens``); the tokens actually received are reported. Tokens per stream come from the final usage chunk
(``stream_options.include_usage``) when the server sends one, else from the count of non-empty text chunks.
Prefill is meant to be cold everywhere: llama-server gets ``cache_prompt: false`` (unless
``--llama-server-cache-prompt``), the in-process model is reset before each request, and herd's prompt cache reuses
whole 64-token prefill chunks only, which these ~30-token prompts never fill. The usage chunk's
``prompt_tokens_details.cached_tokens`` is recorded, and the report says so if a server reused any prompt tokens.

The machine has 2 cores, so any other busy process skews the figures (llama.cpp's spinning threads suffer most).
The script measures it rather than guessing: only one run of it measures at a time (a lock file), it waits (bounded,
``--quiet-wait``) for the machine to be idle before each system, it counts the CPU time used meanwhile by processes
outside the system under test (column "other CPU", in cores; Redis counts as part of herd), measures a system again
when that exceeds 0.1 cores (``--noise-retries``), and marks a verdict UNRELIABLE if its inputs were still disturbed.
``--cycles N`` repeats the whole list of systems N times, interleaved, and pools each system's streams.

Figures, per system and concurrency:
  TTFT p50/p99     ms from sending the request to the first non-empty text chunk;
  decode tok/s     per stream, (tokens - 1) / (time of last text chunk - time of first), median over streams;
  aggregate tok/s  total tokens / wall time of the round(s).
Then the ratios: herd c1 decode tok/s / llama-server -np 1 (target >= 0.95), herd c8 aggregate tok/s /
llama-server -np 8 (target >= 1.2, issue 5), herd TTFT p50 - in-process TTFT p50 at c1 (target <= 5 ms).

Usage (from the repo root, with the project's venv)::

    .venv/bin/python -m bench.serving                                   # herd + in-process
    .venv/bin/python -m bench.serving --llama-server /path/to/llama-server --json /tmp/serving.json
    .venv/bin/python -m bench.serving --quick --skip-herd --llama-server /path/to/llama-server   # smoke run

``--quick`` is a tiny smoke run (16 tokens, 2 sequential requests, 1 round of 8). ``--skip-herd``,
``--skip-inprocess`` leave systems out. The script kills every server it started when it ends (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import httpx

try:
    from bench.common import (
        HERD_MODEL,
        HERD_REDIS_URL,
        NOISY_CORES,
        PROMPTS,
        CpuMeter,
        StreamResult,
        acquire_run_lock,
        default_model_path,
        herd_serve,
        llama_server,
        request_body,
        stream_completion,
        wait_for_quiet,
    )
    from bench.serving_report import Run, compute_ratios, pool_cycles, print_ratios, print_table
except ModuleNotFoundError as exc:  # `python bench/serving.py` puts bench/ on the path, not the repository
    if exc.name != "bench":
        raise
    sys.exit("run it from the repository root as a module: python -m bench.serving ...")


async def measure_http(
    name: str, base_url: str, model: str, args: argparse.Namespace, extra: dict[str, Any], meter: CpuMeter
) -> list[Run]:
    """Warm up, then run concurrency 1 (sequential) and concurrency N (rounds of N simultaneous streams)."""
    url = f"{base_url}/v1/completions"
    timeout = httpx.Timeout(connect=5.0, read=args.timeout, write=10.0, pool=args.timeout)
    limits = httpx.Limits(max_connections=args.concurrency + 2, max_keepalive_connections=args.concurrency + 2)
    runs: list[Run] = []
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        warm = await stream_completion(client, url, request_body(model, PROMPTS[0], 8, extra), args.timeout)
        if not warm.ok:
            raise RuntimeError(f"warm-up request failed: {warm.error}")
        c1 = Run(name, 1)
        meter.start()
        for i in range(args.requests):
            t0 = time.perf_counter()
            body = request_body(model, PROMPTS[i % len(PROMPTS)], args.max_tokens, extra)
            c1.streams.append(await stream_completion(client, url, body, args.timeout))
            c1.round_wall_s.append(time.perf_counter() - t0)
        c1.other_cpu_cores = meter.other_cores()
        runs.append(c1)
        cn = Run(name, args.concurrency)
        meter.start()
        for _ in range(args.rounds):
            bodies = [
                request_body(model, PROMPTS[k % len(PROMPTS)], args.max_tokens, extra) for k in range(args.concurrency)
            ]
            t0 = time.perf_counter()
            results = await asyncio.gather(*(stream_completion(client, url, b, args.timeout) for b in bodies))
            cn.round_wall_s.append(time.perf_counter() - t0)
            cn.streams.extend(results)
        cn.other_cpu_cores = meter.other_cores()
        runs.append(cn)
    return runs


def measure_inprocess(model_path: str, args: argparse.Namespace) -> list[Run]:
    """llama-cpp-python's high-level API in this process, one request at a time, cold prefill each time."""
    import llama_cpp.llama_cpp as low
    from herd.workers.engine import extra_buffers
    from llama_cpp import Llama

    t0 = time.perf_counter()
    defaults = low.llama_model_default_params
    if not extra_buffers("auto"):  # the same weight layout as herd's (no AMX where herd's "auto" turns it off)

        def params() -> Any:
            p = defaults()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params
    try:
        llm: Any = Llama(model_path=model_path, n_ctx=2048, n_threads=args.threads, verbose=False)
    finally:
        low.llama_model_default_params = defaults
    print(f"  model loaded in {time.perf_counter() - t0:.2f} s", flush=True)
    try:
        for _ in llm.create_completion(PROMPTS[0], max_tokens=8, temperature=0, stream=True):  # warm-up
            pass
        run = Run("in-process", 1)
        meter = CpuMeter()
        meter.start()
        for i in range(args.requests):
            llm.reset()  # no KV prefix reuse across requests: herd and llama-server (cache_prompt off) prefill cold
            result = StreamResult(ok=False)
            t_send = time.perf_counter()
            t_first: float | None = None
            t_last = t_send
            stream = llm.create_completion(
                PROMPTS[i % len(PROMPTS)], max_tokens=args.max_tokens, temperature=0, stream=True
            )
            for chunk in stream:
                if chunk["choices"][0]["text"]:
                    now = time.perf_counter()
                    if t_first is None:
                        t_first = now
                    t_last = now
                    result.text_chunks += 1
            end = time.perf_counter()
            result.total_s = end - t_send
            result.tokens = result.text_chunks  # the high-level API yields one chunk per token
            if t_first is not None:
                result.ttft_s = t_first - t_send
                result.decode_s = t_last - t_first
                result.ok = True
            run.streams.append(result)
            run.round_wall_s.append(end - t_send)
        run.other_cpu_cores = meter.other_cores()
        return [run]
    finally:
        llm.close()
        del llm
        gc.collect()


# ---------------------------------------------------------------------------------------------------------------
# The systems over HTTP


def run_herd(args: argparse.Namespace, log_dir: Path) -> list[Run]:
    with herd_serve("herd", args.herd, args.herd_redis_url, args.ready_timeout, log_dir) as (proc, base):
        # Redis is part of herd's stack: its CPU counts as herd's, not as background load
        meter = CpuMeter(session=proc.pid, helpers=("redis-server",))
        return asyncio.run(measure_http("herd", base, args.herd_model, args, {}, meter))


def run_llama_server(args: argparse.Namespace, model_path: str, n_parallel: int, log_dir: Path) -> list[Run]:
    name = f"llama-server -np {n_parallel}"
    extra: dict[str, Any] = {} if args.llama_server_cache_prompt else {"cache_prompt": False}
    server = llama_server(args.llama_server, model_path, n_parallel, args.threads, args.ready_timeout, log_dir)
    with server as (proc, base):
        # -np 1 serves the concurrency-8 load one stream at a time: that is measured too, it shows the queuing
        return asyncio.run(measure_http(name, base, Path(model_path).name, args, extra, CpuMeter(session=proc.pid)))


def machine_info(model_path: str) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "model_file": Path(model_path).name,
        "model_size_mib": round(Path(model_path).stat().st_size / 2**20, 1),
    }


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-server", metavar="PATH", help="llama.cpp llama-server binary (adds -np 1 and -np 8)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 16 tokens, 2 sequential, 1 round")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--requests", type=int, default=4, help="sequential requests at concurrency 1")
    p.add_argument("--rounds", type=int, default=2, help="rounds of simultaneous streams at concurrency N")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--cycles",
        type=int,
        default=1,
        help="run the whole list of systems this many times, interleaved (A B C A B C ...), and pool each system's"
        " streams: a machine whose speed drifts then slows every system alike",
    )
    p.add_argument("--threads", type=int, default=2, help="threads for in-process and llama-server (-t)")
    p.add_argument("--model", help="GGUF path for in-process and llama-server (default: the bundled SmolLM2)")
    p.add_argument("--herd", default=str(Path(sys.executable).with_name("herd")), help="the herd executable")
    p.add_argument("--herd-model", default=HERD_MODEL)
    p.add_argument("--herd-redis-url", default=HERD_REDIS_URL, help="flushed before herd starts")
    p.add_argument("--skip-herd", action="store_true")
    p.add_argument("--skip-inprocess", action="store_true")
    p.add_argument(
        "--llama-server-cache-prompt",
        action="store_true",
        help="leave llama-server's prompt cache on (default: cache_prompt=false, cold prefill like herd)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per stream before it counts as failed")
    p.add_argument(
        "--quiet-wait", type=float, default=120.0, help="seconds to wait for other CPU load to stop before each system"
    )
    p.add_argument(
        "--lock-wait", type=float, default=1800.0, help="seconds to wait for another run of this script to finish"
    )
    p.add_argument(
        "--noise-retries",
        type=int,
        default=2,
        help="measure a system again (up to this many times) when other processes used the CPU meanwhile",
    )
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for a server to be ready")
    args = p.parse_args(argv)
    if args.quick:
        args.max_tokens, args.requests, args.rounds = 16, 2, 1
    if args.noise_retries < 0:
        p.error("--noise-retries must be >= 0")
    if min(args.max_tokens, args.requests, args.rounds, args.concurrency, args.threads) < 1:
        p.error("--max-tokens, --requests, --rounds, --concurrency and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the servers this script started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    model_path = args.model or default_model_path()
    info = machine_info(model_path)
    print(
        f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), load avg "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_at_start'] or ())}, {info['platform']}"
    )
    print(f"model:   {info['model_file']} ({info['model_size_mib']} MiB)")
    print(
        f"load:    max_tokens={args.max_tokens} temperature=0, c1: {args.requests} sequential streams, "
        f"c{args.concurrency}: {args.rounds} round(s) of {args.concurrency} simultaneous streams, "
        f"{len(PROMPTS)} prompts"
    )
    lock = acquire_run_lock(args.lock_wait)
    runs: list[Run] = []
    failures: list[str] = []
    with lock, tempfile.TemporaryDirectory(prefix="herd-bench-") as tmp:
        log_dir = Path(tmp)
        steps: list[tuple[str, Callable[[], list[Run]]]] = []
        if not args.skip_inprocess:
            steps.append(("in-process", lambda: measure_inprocess(model_path, args)))
        if not args.skip_herd:
            steps.append(("herd", lambda: run_herd(args, log_dir)))
        if args.llama_server:
            for n_par in (1, 8):
                steps.append((f"llama-server -np {n_par}", partial(run_llama_server, args, model_path, n_par, log_dir)))
        for cycle, (name, step) in ((c, st) for c in range(args.cycles) for st in steps):
            print(f"running {name} (cycle {cycle + 1} of {args.cycles}) ...", flush=True)
            t0 = time.perf_counter()
            try:
                for attempt in range(args.noise_retries + 1):
                    if args.quiet_wait > 0:
                        load = wait_for_quiet(NOISY_CORES, args.quiet_wait)
                        if load is not None and load >= NOISY_CORES:
                            print(f"  WARNING: still {load:.2f} cores busy with other processes; measuring anyway")
                    measured = step()
                    noise = max((r.other_cpu_cores or 0.0 for r in measured), default=0.0)
                    if noise <= NOISY_CORES or attempt == args.noise_retries:
                        break
                    print(
                        f"  other processes used {noise:.2f} cores meanwhile: discarding, measuring again", flush=True
                    )
                runs.extend(measured)
            except (RuntimeError, OSError, httpx.HTTPError) as exc:
                failures.append(f"{name}: {exc}")
                print(f"  FAILED: {exc}", flush=True)
                log = log_dir / f"{name.replace(' ', '_')}.log"
                if log.exists():
                    print(
                        "  last lines of its log:\n    "
                        + "\n    ".join(log.read_text(errors="replace").splitlines()[-15:]),
                        flush=True,
                    )
            print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
    summaries = [r.summary() for r in pool_cycles(runs)]
    print()
    print_table(summaries)
    print()
    ratios = compute_ratios(summaries, args.concurrency)
    print_ratios(ratios, args.concurrency, summaries)
    if failures:
        print("\nfailed systems:\n  " + "\n  ".join(failures))
    if args.json:
        payload = {
            "machine": info,
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "prompts": list(PROMPTS),
            "summaries": summaries,
            "ratios": ratios,
            "failures": failures,
            "streams": [
                {"system": r.system, "concurrency": r.concurrency, **asdict(s)} for r in runs for s in r.streams
            ],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
