"""The rest of issue 5's table, side by side in one run: queued streams, prefix cache, speculative decoding.

Rows (temperature 0, fixed max_tokens, the same prompts for every system; the helpers come from bench/common.py):

queued    ``--queued`` (32) simultaneous streams over 8 slots: herd (max_seqs 8) vs ``llama-server -np 8``;
          TTFT p99 and aggregate tok/s (needs ``--llama-server``).
prefix    pairs of requests sharing one ~1,000-token system prompt (each pair its own prompt, so the first is
          cold): the second request's TTFT / the first's, median over the pairs, for herd and (with
          ``cache_prompt: true``) llama-server -np 8.
lookup    input-grounded prompts (repeat / edit / extract from a given text), one stream at a time: herd with
          prompt-lookup speculation (a model entry with ``?speculate=lookup``) vs herd without; decode tok/s and
          acceptance.
lookup16  the same on the F16 conversion below (where verifying extra tokens is cheap on a CPU: F16 decode is
          bound by memory, Q4_1 decode by arithmetic); herd f16 with and without prompt lookup.
chat1, rag, repeat, multiturn
          issue 20's prompt-side rows, herd vs llama-server -np 8 over chat completions (see bench/prompt_rows.py).
draft     target = the bundled Q4_1 model converted to F16 by this script (llama.cpp's quantize API, allowing
          requantization: it dequantizes), draft = the Q4_1 file (``?speculate=draft&draft_path=...``) vs herd
          without, on the story prompts (bench/common.py's PROMPTS); decode tok/s and acceptance rate.

The speculation rows compare in pairs, because this machine drifts by 10-40 % within minutes: one herd serves the
same file under two names, with and without speculation, and each prompt goes to both back to back (the order
alternating), ``--spec-repeats`` times; the row's ratio is the median of the per-pair ratios.

Usage (repo root)::

    .venv/bin/python -m bench.rows --llama-server /path/to/llama-server [--rows queued,prefix,lookup,lookup16,draft]
    .venv/bin/python -m bench.rows --llama-server /path/to/llama-server --rows chat1,rag,repeat,multiturn [--herd-pack]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

try:
    from bench import common as C
    from bench import prompt_rows
except ModuleNotFoundError as exc:  # `python bench/rows.py` puts bench/ on the path, not the repository
    if exc.name != "bench":
        raise
    sys.exit("run it from the repository root as a module: python -m bench.rows ...")

SYSTEM_FACTS = (
    "the reading room opens at {h} in the morning",
    "maps from shelf {h} may not leave the building",
    "visitors who bring tea must use the green cups from cabinet {h}",
    "the archivist on duty signs every loan slip with ink number {h}",
    "lost umbrellas are kept for {h} days in the cellar",
)
GROUNDED_TEXT = (
    "The old harbour town of Vell lies at the mouth of a slow brown river. Every morning the fishing boats leave "
    "before dawn and return at noon with herring, cod and sometimes a lost crab pot. The market opens when the "
    "church bell rings twelve times. Mara sells bread from a blue cart, her brother Tomas mends nets on the quay, "
    "and the harbour master writes the name of every ship in a red book that nobody else may touch. In winter the "
    "river freezes near the bridge, and the children skate from the mill to the lighthouse and back again."
)
GROUNDED_TASKS = (
    "Repeat the following text exactly, word for word:\n\n{t}",
    "Rewrite the following text, replacing the name Mara with Lena and keeping everything else the same:\n\n{t}",
    "Copy every sentence of the following text that mentions the harbour or the river:\n\n{t}",
    "Here is a text:\n\n{t}\n\nNow write the same text again, unchanged.",
)


def chat(user: str, system: str | None = None) -> str:
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def system_prompt(pair: int) -> str:
    """A ~1,000-token house rulebook, different for every pair (its first line says which)."""
    rules = [f"Rulebook {pair} of the Vell town library."]
    for i in range(1, 51):
        rules.append(f"Rule {i}: " + SYSTEM_FACTS[(i + pair) % len(SYSTEM_FACTS)].format(h=(i * 7 + pair) % 97) + ".")
    return " ".join(rules)


async def gather_streams(url: str, bodies: list[dict[str, Any]], limit_s: float) -> tuple[list[C.StreamResult], float]:
    limits = httpx.Limits(max_connections=len(bodies) + 2, max_keepalive_connections=len(bodies) + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(limit_s), limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(C.stream_completion(client, url, b, limit_s) for b in bodies))
        return list(results), time.perf_counter() - t0


async def sequential(url: str, bodies: list[dict[str, Any]], limit_s: float) -> list[C.StreamResult]:
    """One stream at a time."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(limit_s), trust_env=False) as client:
        return [await C.stream_completion(client, url, body, limit_s) for body in bodies]


def measure(name: str, base: str, model: str, rows: set[str], args: argparse.Namespace, extra: dict[str, Any]) -> dict:
    url = f"{base}/v1/completions"
    res: dict[str, Any] = {"system": name}
    warm = asyncio.run(gather_streams(url, [C.request_body(model, C.PROMPTS[0], 8, extra)], args.timeout))
    if not warm[0][0].ok:
        raise RuntimeError(f"warm-up failed: {warm[0][0].error}")
    if "queued" in rows:
        bodies = [
            C.request_body(model, C.PROMPTS[i % len(C.PROMPTS)], args.max_tokens, extra) for i in range(args.queued)
        ]
        streams, wall = asyncio.run(gather_streams(url, bodies, args.timeout))
        ok = [s for s in streams if s.ok]
        ttfts = [s.ttft_s * 1000 for s in ok if s.ttft_s is not None]
        res["queued"] = {
            "streams": len(streams),
            "errors": len(streams) - len(ok),
            "ttft_p50_ms": C.percentile(ttfts, 50),
            "ttft_p99_ms": C.percentile(ttfts, 99),
            "aggregate_tps": sum(s.tokens for s in ok) / wall,
        }
    if "prefix" in rows:
        cache = {} if name == "herd" else {"cache_prompt": True}
        firsts, seconds, cached = [], [], 0
        for pair in range(args.pairs):
            sysp = system_prompt(pair)
            bodies = [
                C.request_body(model, chat(q, sysp), 16, {**extra, **cache})
                for q in ("What time does the reading room open?", "Where are lost umbrellas kept?")
            ]
            a = asyncio.run(gather_streams(url, bodies[:1], args.timeout))[0][0]
            b = asyncio.run(gather_streams(url, bodies[1:], args.timeout))[0][0]
            if a.ttft_s and b.ttft_s:
                firsts.append(a.ttft_s * 1000)
                seconds.append(b.ttft_s * 1000)
                cached += b.cached_tokens
        res["prefix"] = {
            "first_ttft_ms": statistics.median(firsts) if firsts else None,
            "second_ttft_ms": statistics.median(seconds) if seconds else None,
            "ratio": statistics.median(s / f for f, s in zip(firsts, seconds, strict=True)) if firsts else None,
            "cached_tokens_second": cached / max(len(seconds), 1),
        }
    res.update(prompt_rows.measure(base, model, rows, args))
    return res


def measure_pairs(base: str, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Each prompt to model `plain` and to model `spec` back to back (alternating which goes first)."""
    url = f"{base}/v1/completions"
    deadline = time.monotonic() + args.ready_timeout
    for model in ("plain", "spec"):  # /readyz answers once one worker is up: wait for the other's too
        while not (warm := asyncio.run(gather_streams(url, [C.request_body(model, prompts[0], 8, {})], 60.0)))[0][0].ok:
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up of {model} failed: {warm[0][0].error}")
            time.sleep(0.5)
    tps: dict[str, list[float]] = {"plain": [], "spec": []}
    ratios: list[float] = []
    drafted = accepted = 0
    for rep in range(args.spec_repeats):
        for i, prompt in enumerate(prompts):
            order = ("plain", "spec") if (rep + i) % 2 == 0 else ("spec", "plain")
            pair: dict[str, float] = {}
            for model in order:
                body = C.request_body(model, prompt, args.max_tokens, {})
                stream = asyncio.run(sequential(url, [body], args.timeout))[0]
                if not stream.ok or stream.decode_tps is None:
                    raise RuntimeError(f"{model}: {stream.error}")
                pair[model] = stream.decode_tps
                spec = stream.usage.get("speculation") or {}
                drafted += int(spec.get("drafted_tokens") or 0)
                accepted += int(spec.get("accepted_tokens") or 0)
            for model, value in pair.items():
                tps[model].append(value)
            ratios.append(pair["spec"] / pair["plain"])
    return {
        "plain_tps_median": statistics.median(tps["plain"]),
        "spec_tps_median": statistics.median(tps["spec"]),
        "pairs": len(ratios),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "drafted": drafted,
        "accepted": accepted,
        "acceptance": accepted / drafted if drafted else None,
    }


def run_pairs(
    row: str, args: argparse.Namespace, path: str, spec: str, prompts: list[str], log_dir: Path
) -> dict[str, Any]:
    """Row `row` from one herd serving `path` as `plain` and, with the model options `spec`, as `spec`."""
    models = {"HERD_MODELS": f"plain={path},spec={path}?{spec}"}
    with C.herd_serve(f"herd {row}", args.herd, args.herd_redis_url, args.ready_timeout, log_dir, models) as (_, base):
        return {row: measure_pairs(base, prompts[: args.spec_prompts], args)}


def run_herd(name: str, args: argparse.Namespace, rows: set[str], log_dir: Path, env: dict[str, str]) -> dict:
    with C.herd_serve(name, args.herd, args.herd_redis_url, args.ready_timeout, log_dir, env) as (_, base):
        model = env.get("HERD_MODELS", C.HERD_MODEL).split("=")[0]
        result = measure("herd", base, model, rows, args, {})
        result["system"] = name
        return result


def run_llama(args: argparse.Namespace, rows: set[str], log_dir: Path) -> dict:
    model = C.default_model_path()
    with C.llama_server(args.llama_server, model, 8, args.threads, args.ready_timeout, log_dir) as (_, base):
        return measure("llama-server -np 8", base, Path(model).name, rows, args, {"cache_prompt": False})


def make_f16(path: Path) -> None:
    """The bundled Q4_1 model dequantized to F16 (llama.cpp's quantize API with allow_requantize)."""
    import ctypes

    import llama_cpp as L

    quiet = L.llama_log_callback(lambda level, text, user_data: None)  # its per-tensor lines are noise here
    L.llama_log_set(quiet, ctypes.c_void_p(0))
    params = L.llama_model_quantize_default_params()
    params.ftype = L.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    params.nthread = 2
    rc = L.llama_model_quantize(C.default_model_path().encode(), str(path).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")


def report(results: dict[str, dict]) -> None:
    def get(system: str, row: str, key: str) -> float | None:
        value: float | None = (results.get(system) or {}).get(row, {}).get(key)
        return value

    print()
    for system, res in results.items():
        for row in ("queued", "prefix", "lookup", "lookup16", "draft", *prompt_rows.PROMPT_ROWS):
            if row in res:
                print(f"{system:<22} {row:<7} " + "  ".join(f"{k}={C.fmt(v, '.2f')}" for k, v in res[row].items()))
    print()
    herd, llama = "herd", "llama-server -np 8"
    p99, agg, ratio, acc = "ttft_p99_ms", "aggregate_tps", "ratio_median", "acceptance"
    lines = [
        ("queued: herd TTFT p99 / llama-server", C.ratio(get(herd, "queued", p99), get(llama, "queued", p99)), "< 1"),
        ("queued: herd aggr tok/s / llama-server", C.ratio(get(herd, "queued", agg), get(llama, "queued", agg)), "> 1"),
        ("prefix: herd 2nd TTFT / 1st TTFT", get(herd, "prefix", "ratio"), "<= 0.2"),
        ("prefix: llama-server 2nd TTFT / 1st TTFT", get(llama, "prefix", "ratio"), ""),
        ("lookup: +lookup decode tok/s / without (pairs)", get("lookup", "lookup", ratio), ">= 1.5"),
        ("lookup: acceptance rate", get("lookup", "lookup", acc), ""),
        ("lookup16: f16+lookup tok/s / f16 (pairs)", get("lookup16", "lookup16", ratio), ">= 1.5"),
        ("lookup16: acceptance rate", get("lookup16", "lookup16", acc), ""),
        ("draft: f16+draft tok/s / f16 (pairs)", get("draft", "draft", ratio), "> 1.0"),
        ("draft: acceptance rate", get("draft", "draft", acc), ""),
    ]  # fmt: skip
    lines += prompt_rows.report_lines(get)
    for label, value, target in lines:
        print(f"{label:<48} {C.fmt(value, '.3f'):>8}   {('target ' + target) if target else ''}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-server", metavar="PATH")
    p.add_argument("--rows", default="queued,prefix,lookup,lookup16,draft")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--queued", type=int, default=32)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--rag", type=int, default=8, help="concurrent documents in the rag and repeat rows")
    p.add_argument("--users", type=int, default=8, help="users in the multiturn row")
    p.add_argument("--turns", type=int, default=5, help="turns per user in the multiturn row")
    p.add_argument("--spec-prompts", type=int, default=4)
    p.add_argument("--spec-repeats", type=int, default=2, help="pairs per prompt in the speculation rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--herd-pack", action="store_true", help="also a herd with HERD_PREFILL_PACK=1 ('herd pack')")
    p.add_argument("--herd", default=str(Path(sys.executable).with_name("herd")))
    p.add_argument("--herd-redis-url", default=C.HERD_REDIS_URL)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--quiet-wait", type=float, default=120.0)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    rows = set(args.rows.split(","))
    print(f"rows: {sorted(rows)}; max_tokens={args.max_tokens} temperature=0; load avg {os.getloadavg()}")
    lock = C.acquire_run_lock(1800.0)
    results: dict[str, dict] = {}
    with lock, tempfile.TemporaryDirectory(prefix="herd-rows-") as tmp:
        log_dir = Path(tmp)
        steps: list[tuple[str, Callable[[], dict]]] = []
        base_rows = rows & {"queued", "prefix", *prompt_rows.PROMPT_ROWS}
        if base_rows:
            steps.append(("herd", lambda: run_herd("herd", args, base_rows, log_dir, {})))
        if base_rows and args.herd_pack:
            pack = {"HERD_PREFILL_PACK": "1"}
            steps.append(("herd pack", lambda: run_herd("herd pack", args, base_rows, log_dir, pack)))
        q4, f16 = C.default_model_path(), str(log_dir / "smollm2-135m-f16.gguf")
        grounded = [chat(t.format(t=GROUNDED_TEXT)) for t in GROUNDED_TASKS]
        stories = list(C.PROMPTS)
        if rows & {"lookup16", "draft"}:
            make_f16(Path(f16))  # before any measuring, not a system of its own
        for row, path, spec, prompts in (
            ("lookup", q4, "speculate=lookup", grounded),
            ("lookup16", f16, "speculate=lookup", grounded),
            ("draft", f16, f"speculate=draft&draft_path={q4}", stories),
        ):
            if row in rows:
                steps.append((row, functools.partial(run_pairs, row, args, path, spec, prompts, log_dir)))
        if args.llama_server and base_rows:
            steps.append(("llama-server -np 8", lambda: run_llama(args, base_rows, log_dir)))
        for name, step in steps:
            print(f"running {name} ...", flush=True)
            load = C.wait_for_quiet(C.NOISY_CORES, args.quiet_wait)
            if load is not None and load >= C.NOISY_CORES:
                print(f"  WARNING: {load:.2f} cores busy with other processes; measuring anyway", flush=True)
            t0 = time.perf_counter()
            try:
                results[name] = step()
                results[name]["loadavg_after"] = os.getloadavg()[0]
            except (RuntimeError, OSError, httpx.HTTPError) as exc:
                print(f"  FAILED: {exc}", flush=True)
            print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
