"""BENCHMARK ONLY: issue 20's prompt rows (bench/prompt_rows.py) paired, so the machine's drift cancels out.

bench.rows runs herd, then llama-server, a minute or more apart; on this shared machine the speed drifts by tens of
per cent within minutes, and one run's ratio says as much about the drift as about the two servers (two runs on
2026-12-06 put the short-chat ratio at 0.71 and 1.45). Here both servers are up at once (each idle while the other
is measured) and every round measures each row on both, back to back, in alternating order; each round gives a
ratio per row, and the report is the median of those ratios with their range, beside each server's median figure.

    .venv/bin/python -m bench.paired_prompts --llama-server /path/to/llama-server [--rounds 5] \
        [--rows chat1,rag,repeat,multiturn] [--herd-b-env HERD_PREFILL_BUDGET=2048]

--herd-b-env starts a second herd with those settings (over its own Redis database) beside the first, and every
round measures all three, the order rotating: two herd settings compared against llama-server in one paired run.

A round's rag row is the first burst of its 8 documents on each server in that round, its repeat row the same burst
again right after (so both servers start each round's rag from a cache of the previous round's documents: the
documents differ by round). chat1 sends its five questions one at a time; multiturn is 8 users x 5 turns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench import common as C
from bench import prompt_rows as P

# (row, metric): the figures the targets compare
METRICS = (
    ("chat1", "ttft_p50_ms"),
    ("rag", "aggregate_tps"),
    ("rag", "itl_p99_ms"),
    ("repeat", "ttft_p50_ms"),
    ("repeat", "aggregate_tps"),
    ("multiturn", "ttft_p50_ms"),
    ("multiturn", "ttft_p99_ms"),
)
LLAMA = "llama-server -np 8"


async def _chat1(url: str, model: str, timeout_s: float) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), trust_env=False) as client:
        streams = [
            await P.stream_chat(client, url, P.chat_body(model, [{"role": "user", "content": q}], 1), timeout_s)
            for q in P.QUESTIONS
        ]
    ttfts = [s.ttft_s * 1000 for s in streams if s.ok and s.ttft_s is not None]
    return {"errors": sum(not s.ok for s in streams), "ttft_p50_ms": C.percentile(ttfts, 50)}


async def _round(url: str, model: str, rows: set[str], n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One round of the rows on one server; round n's documents are its own."""
    res: dict[str, Any] = {}
    if "chat1" in rows:
        res["chat1"] = await _chat1(url, model, args.timeout)
    texts = [P.document(n * args.rag + i) for i in range(args.rag)]
    docs = [P.chat_body(model, [{"role": "user", "content": text}], 32) for text in texts]
    if rows & {"rag", "repeat"}:
        res["rag"] = await P.burst(url, docs, args.timeout)
    if "repeat" in rows:
        res["repeat"] = await P.burst(url, docs, args.timeout)
    if "multiturn" in rows:
        res["multiturn"] = await P.multiturn(url, model, args.users, args.turns, args.timeout)
    return res


def measure(servers: dict[str, tuple[str, str]], rows: set[str], args: argparse.Namespace) -> dict[str, list[dict]]:
    """servers: name -> (chat URL, model); returns each server's rounds."""
    out: dict[str, list[dict]] = {name: [] for name in servers}
    names = list(servers)
    for n in range(args.rounds):
        order = names[n % len(names) :] + names[: n % len(names)]  # two servers: alternating; three: rotating
        for name in order:
            url, model = servers[name]
            out[name].append(asyncio.run(_round(url, model, rows, n, args)))
            print(f"  round {n + 1} {name}: {_brief(out[name][-1])}", flush=True)
    return out


def _brief(result: dict[str, Any]) -> str:
    return ", ".join(f"{row} {k}={C.fmt(v)}" for row, r in result.items() for k, v in r.items() if k != "errors")


def report(results: dict[str, list[dict]]) -> list[str]:
    """Each herd's rows against llama-server's: medians, the median of the rounds' ratios, the rounds' ratios."""
    llama = results[LLAMA]
    lines = [f"{'row':28s} {'server':10s} {'median':>9s} {'llama median':>13s} {'ratio median':>13s}  per-round ratios"]
    for row, key in METRICS:
        for name, rounds in results.items():
            if name == LLAMA:
                continue
            pairs = [(h.get(row, {}).get(key), ll.get(row, {}).get(key)) for h, ll in zip(rounds, llama, strict=True)]
            pairs = [(h, ll) for h, ll in pairs if h is not None and ll is not None]
            if not pairs:
                continue
            ratios = [h / ll for h, ll in pairs if ll]
            lines.append(
                f"{row + ' ' + key:28s} {name:10s} {statistics.median(h for h, _ in pairs):9.1f} "
                f"{statistics.median(ll for _, ll in pairs):13.1f} {statistics.median(ratios):13.3f}  "
                + " ".join(f"{r:.2f}" for r in ratios)
            )
    errors = {name: sum(r[row].get("errors", 0) for r in rounds for row in r) for name, rounds in results.items()}
    lines.append(f"failed requests (or users, in multiturn): {errors}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-server", metavar="PATH", required=True)
    p.add_argument("--rows", default=",".join(P.PROMPT_ROWS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rag", type=int, default=8)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--herd", default=str(Path(sys.executable).with_name("herd")))
    p.add_argument("--herd-redis-url", default=C.HERD_REDIS_URL)
    p.add_argument("--herd-env", action="append", default=[], metavar="KEY=VALUE", help="a setting for herd (repeat)")
    p.add_argument(
        "--herd-b-env", action="append", default=[], metavar="KEY=VALUE", help="a setting for a second herd (repeat)"
    )
    p.add_argument("--herd-b-redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--ready-timeout", type=float, default=180.0)
    args = p.parse_args(argv)
    rows = set(args.rows.split(",")) & set(P.PROMPT_ROWS)
    env = dict(item.split("=", 1) for item in args.herd_env)
    env_b = dict(item.split("=", 1) for item in args.herd_b_env)
    lock = C.acquire_run_lock(1800.0)
    with lock, tempfile.TemporaryDirectory(prefix="herd-paired-") as tmp, contextlib.ExitStack() as stack:
        log_dir = Path(tmp)
        model = C.default_model_path()
        _, herd_base = stack.enter_context(
            C.herd_serve("herd", args.herd, args.herd_redis_url, args.ready_timeout, log_dir, env)
        )
        servers = {"herd": (f"{herd_base}/v1/chat/completions", C.HERD_MODEL)}
        if env_b:
            _, b_base = stack.enter_context(
                C.herd_serve("herd B", args.herd, args.herd_b_redis_url, args.ready_timeout, log_dir, env_b)
            )
            servers["herd B"] = (f"{b_base}/v1/chat/completions", C.HERD_MODEL)
            print(f"herd B: {' '.join(args.herd_b_env)}", flush=True)
        _, llama_base = stack.enter_context(
            C.llama_server(args.llama_server, model, 8, args.threads, args.ready_timeout, log_dir)
        )
        servers[LLAMA] = (f"{llama_base}/v1/chat/completions", Path(model).name)
        for name, (url, served) in servers.items():  # the first request loads what each loads lazily
            asyncio.run(_chat1(url, served, args.timeout))
            print(f"warmed up {name}", flush=True)
        results = measure(servers, rows, args)
    print("\n".join(report(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
