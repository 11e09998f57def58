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
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
        fmt,
        herd_serve,
        llama_server,
        percentile,
        ratio,
        request_body,
        stream_completion,
        wait_for_quiet,
    )
except ModuleNotFoundError as exc:  # `python bench/serving.py` puts bench/ on the path, not the repository
    if exc.name != "bench":
        raise
    sys.exit("run it from the repository root as a module: python -m bench.serving ...")


@dataclass
class Run:
    """One system at one client concurrency."""

    system: str
    concurrency: int
    streams: list[StreamResult] = field(default_factory=list)
    round_wall_s: list[float] = field(default_factory=list)
    other_cpu_cores: float | None = None  # mean CPU cores used by processes outside the system under test

    def summary(self) -> dict[str, Any]:
        ok = [s for s in self.streams if s.ok]
        ttfts = [s.ttft_s * 1000 for s in ok if s.ttft_s is not None]
        tps = [v for v in (s.decode_tps for s in ok) if v is not None]
        tokens = sum(s.tokens for s in ok)
        wall = sum(self.round_wall_s)
        return {
            "system": self.system,
            "concurrency": self.concurrency,
            "streams": len(self.streams),
            "errors": len(self.streams) - len(ok),
            "first_error": next((s.error for s in self.streams if not s.ok), ""),
            "tokens_total": tokens,
            "tokens_per_stream_mean": tokens / len(ok) if ok else 0.0,
            "usage_reported": all(s.usage_tokens is not None for s in ok) if ok else False,
            "cached_prompt_tokens_total": sum(s.cached_tokens for s in ok),
            "ttft_p50_ms": percentile(ttfts, 50),
            "ttft_p99_ms": percentile(ttfts, 99),
            "decode_tps_median": statistics.median(tps) if tps else None,
            "aggregate_tps": tokens / wall if wall > 0 else None,
            "wall_s": wall,
            "other_cpu_cores": self.other_cpu_cores,
        }


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


# ---------------------------------------------------------------------------------------------------------------
# Report


def print_table(summaries: list[dict[str, Any]]) -> None:
    header = (
        f"{'system':<20} {'conc':>4} {'streams':>7} {'err':>3} {'tok/stream':>10} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'decode tok/s':>12} {'aggr tok/s':>10} {'other CPU':>9}"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        print(
            f"{s['system']:<20} {s['concurrency']:>4} {s['streams']:>7} {s['errors']:>3} "
            f"{s['tokens_per_stream_mean']:>10.1f} {fmt(s['ttft_p50_ms']):>9} {fmt(s['ttft_p99_ms']):>9} "
            f"{fmt(s['decode_tps_median']):>12} {fmt(s['aggregate_tps']):>10} {fmt(s['other_cpu_cores'], '.2f'):>9}"
        )
    print("(TTFT in ms; decode tok/s = median per stream; aggr tok/s = total tokens / wall time of the rounds;")
    print(" other CPU = mean cores used meanwhile by processes outside the measured system: ~0 for clean figures)")
    for s in summaries:
        if (s["other_cpu_cores"] or 0.0) > NOISY_CORES:
            print(f"  {s['system']} c{s['concurrency']}: WARNING other processes used {s['other_cpu_cores']:.2f} cores")
        if s["errors"]:
            print(f"  {s['system']} c{s['concurrency']}: {s['errors']} failed stream(s), first: {s['first_error']}")
        if not s["usage_reported"] and s["streams"] > s["errors"] and s["system"] != "in-process":
            print(f"  {s['system']} c{s['concurrency']}: no usage chunk; tokens counted as non-empty text chunks")
        if s["cached_prompt_tokens_total"]:
            print(
                f"  {s['system']} c{s['concurrency']}: the server reused {s['cached_prompt_tokens_total']} cached"
                " prompt tokens (prefill was not cold)"
            )


def compute_ratios(summaries: list[dict[str, Any]], concurrency: int) -> dict[str, float | None]:
    def get(system: str, conc: int, key: str) -> float | None:
        for s in summaries:
            if s["system"] == system and s["concurrency"] == conc:
                value: float | None = s[key]
                return value
        return None

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    herd_ttft = get("herd", 1, "ttft_p50_ms")
    return {
        "herd_c1_decode_vs_llama_np1": ratio(
            get("herd", 1, "decode_tps_median"), get("llama-server -np 1", 1, "decode_tps_median")
        ),
        "herd_c1_aggregate_vs_llama_np1": ratio(
            get("herd", 1, "aggregate_tps"), get("llama-server -np 1", 1, "aggregate_tps")
        ),
        f"herd_c{concurrency}_aggregate_vs_llama_np8": ratio(
            get("herd", concurrency, "aggregate_tps"), get("llama-server -np 8", concurrency, "aggregate_tps")
        ),
        "herd_c1_decode_vs_inprocess": ratio(
            get("herd", 1, "decode_tps_median"), get("in-process", 1, "decode_tps_median")
        ),
        "herd_minus_inprocess_ttft_p50_ms": diff(herd_ttft, get("in-process", 1, "ttft_p50_ms")),
        "herd_minus_llama_np1_ttft_p50_ms": diff(herd_ttft, get("llama-server -np 1", 1, "ttft_p50_ms")),
    }


def print_ratios(ratios: dict[str, float | None], concurrency: int, summaries: list[dict[str, Any]]) -> None:
    busy = {(s["system"], s["concurrency"]): s["other_cpu_cores"] or 0.0 for s in summaries}

    def verdict(value: float | None, target: float, higher_is_better: bool, *runs: tuple[str, int]) -> str:
        if value is None:
            return "n/a"
        met = value >= target if higher_is_better else value <= target
        noisy = [f"{name} c{conc}" for name, conc in runs if busy.get((name, conc), 0.0) > NOISY_CORES]
        return ("MET" if met else "MISSED") + (
            f" (UNRELIABLE: machine busy during {', '.join(noisy)})" if noisy else ""
        )

    c1 = ratios["herd_c1_decode_vs_llama_np1"]
    cn = ratios[f"herd_c{concurrency}_aggregate_vs_llama_np8"]
    dt = ratios["herd_minus_inprocess_ttft_p50_ms"]
    print(
        f"herd c1 decode tok/s / llama-server -np 1        {fmt(c1, '.3f'):>8}   target >= 0.95  "
        f"{verdict(c1, 0.95, True, ('herd', 1), ('llama-server -np 1', 1))}"
    )
    print(
        f"herd c{concurrency} aggregate tok/s / llama-server -np 8     {fmt(cn, '.3f'):>8}   target >= 1.2   "
        f"{verdict(cn, 1.2, True, ('herd', concurrency), ('llama-server -np 8', concurrency))}"
    )
    print(
        f"herd TTFT p50 - in-process TTFT p50 (c1, ms)     {fmt(dt, '.1f'):>8}   target <= 5 ms  "
        f"{verdict(dt, 5.0, False, ('herd', 1), ('in-process', 1))}"
    )
    print(f"herd c1 aggregate tok/s / llama-server -np 1     {fmt(ratios['herd_c1_aggregate_vs_llama_np1'], '.3f'):>8}")
    print(f"herd c1 decode tok/s / in-process                {fmt(ratios['herd_c1_decode_vs_inprocess'], '.3f'):>8}")
    print(
        f"herd TTFT p50 - llama-server -np 1 TTFT p50 (ms) {fmt(ratios['herd_minus_llama_np1_ttft_p50_ms'], '.1f'):>8}"
    )


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


def pool_cycles(runs: list[Run]) -> list[Run]:
    """One Run per (system, concurrency), holding the streams and round times of every cycle."""
    pooled: dict[tuple[str, int], Run] = {}
    for run in runs:
        key = (run.system, run.concurrency)
        if key not in pooled:
            pooled[key] = Run(run.system, run.concurrency, other_cpu_cores=run.other_cpu_cores)
        target = pooled[key]
        target.streams.extend(run.streams)
        target.round_wall_s.extend(run.round_wall_s)
        if run.other_cpu_cores is not None:
            target.other_cpu_cores = max(target.other_cpu_cores or 0.0, run.other_cpu_cores)
    return list(pooled.values())


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
