"""The README's picture of the Grafana dashboard's main panels (helm/herd/dashboards/herd.json), drawn from real data:
starts `herd serve` (bundled model, prompt-lookup speculation), drives a varying load of streamed chats for a few
minutes, scrapes /metrics every few seconds, evaluates the panels' queries over the scrapes (rates over a window,
histogram quantiles with Prometheus's interpolation) and plots them with matplotlib.

    python -m bench.dashboard [--seconds 150] [--out helm/herd/dashboards/herd.png]

Needs the `dashboard` extra (matplotlib). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import HERD_MODEL, HERD_REDIS_URL, herd_serve

LINE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
SYSTEM = "You are herd's support assistant. Answer in one or two short sentences, plainly, without lists. " * 4
W = "herd_worker"
TTFT = "gen_ai_server_time_to_first_token_seconds"
TOPICS = ("queues", "batching", "speculative decoding", "prefix caching", "Redis", "tracing", "Helm", "workers")


def parse(text: str) -> Series:
    out: Series = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if match and not line.startswith("#"):
            out[(match["name"], frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or "")))] = float(
                match["value"]
            )
    return out


def total(series: Series, name: str, **labels: str) -> float:
    return sum(v for (n, k), v in series.items() if n == name and labels.items() <= dict(k).items())


def rate(a: Series, b: Series, dt: float, name: str, **labels: str) -> float:
    return max(0.0, total(b, name, **labels) - total(a, name, **labels)) / dt


def quantile(a: Series, b: Series, q: float, name: str, **labels: str) -> float | None:
    """histogram_quantile(q, sum by (le) (increase(name_bucket{labels}))) as Prometheus interpolates it."""
    buckets: dict[float, float] = {}
    for (n, k), v in b.items():
        d = dict(k)
        if n == f"{name}_bucket" and labels.items() <= {x: y for x, y in d.items() if x != "le"}.items():
            le = float("inf") if d["le"] == "+Inf" else float(d["le"])
            buckets[le] = buckets.get(le, 0.0) + v - a.get((n, k), 0.0)
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank, previous_bound, previous_count = q * buckets[bounds[-1]], 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / max(buckets[bound] - previous_count, 1e-9)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, buckets[bound]
    return None


def ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None  # no data: a gap, as Grafana shows a division by zero


async def client(base: str, stop: float, load: list[int], index: int) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(timeout=120) as http:
        while time.monotonic() < stop:
            if index >= load[0]:  # this client sits out the current phase
                await asyncio.sleep(0.5)
                continue
            topic = rng.choice(TOPICS)
            if rng.random() < 0.08:  # a request the worker refuses (too long): the errors panel
                body = {"model": HERD_MODEL, "prompt": "word " * 9000, "max_tokens": 4}
                await http.post(f"{base}/v1/completions", json=body)
                continue
            if rng.random() < 0.5:  # lookup-friendly: the answer repeats the prompt's text
                text = f"Repeat exactly: herd serves {topic} from a queue, and herd serves {topic} fast."
                messages = [{"role": "user", "content": text}]
            else:  # a shared system prompt: the prefix cache's case
                messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {topic}?"}]
            body = {"model": HERD_MODEL, "messages": messages, "max_tokens": rng.randint(16, 64), "stream": True}
            async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
                async for _ in resp.aiter_lines():
                    pass


async def drive(base: str, seconds: float, every: float) -> list[tuple[float, Series]]:
    stop = time.monotonic() + seconds
    load = [1]
    scrapes: list[tuple[float, Series]] = []
    tasks = [asyncio.create_task(client(base, stop, load, i)) for i in range(8)]
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        while time.monotonic() < stop:
            elapsed = time.monotonic() - started
            load[0] = (1, 3, 6, 8, 4)[min(4, int(elapsed / (seconds / 5)))]  # a ramp up and back
            scrapes.append((elapsed, parse((await http.get(f"{base}/metrics")).text)))
            await asyncio.sleep(every)
    await asyncio.gather(*tasks, return_exceptions=True)
    return scrapes


def plot(scrapes: list[tuple[float, Series]], window: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(scrapes[i][0], scrapes[i - window][1], scrapes[i][1], scrapes[i][0] - scrapes[i - window][0])
              for i in range(window, len(scrapes))]  # fmt: skip
    t = [p[0] for p in points]
    inter = {"herd_priority": "interactive"}
    panels = [
        ("Time to first token (s)", {
            "p50": [quantile(a, b, 0.5, TTFT, **inter) for _, a, b, _ in points],
            "p95": [quantile(a, b, 0.95, TTFT, **inter) for _, a, b, _ in points],
        }),
        ("Time per output token (s)", {
            "p50": [quantile(a, b, 0.5, "gen_ai_server_time_per_output_token_seconds") for _, a, b, _ in points],
            "p95": [quantile(a, b, 0.95, "gen_ai_server_time_per_output_token_seconds") for _, a, b, _ in points],
        }),
        ("Tokens per second", {
            "completion": [rate(a, b, dt, "herd_tokens_total", kind="completion") for _, a, b, dt in points],
            "prompt": [rate(a, b, dt, "herd_tokens_total", kind="prompt") for _, a, b, dt in points],
        }),
        ("Queue depth and wait", {
            "waiting": [total(b, "herd_queue_waiting") for _, _, b, _ in points],
            "running": [total(b, "herd_queue_running") for _, _, b, _ in points],
            "p95 wait (s)": [quantile(a, b, 0.95, "herd_queue_wait_seconds") for _, a, b, _ in points],
        }),
        ("Requests and errors per second", {
            "requests": [rate(a, b, dt, "gen_ai_server_request_duration_seconds_count") for _, a, b, dt in points],
            "failed": [
                rate(a, b, dt, "gen_ai_server_request_duration_seconds_count", error_type="context_length_exceeded")
                for _, a, b, dt in points
            ],
        }),
        ("Caches and speculation", {
            "prefix-cache hit rate": [
                ratio(rate(a, b, dt, f"{W}_prefix_cache_hit_tokens_total"), rate(a, b, dt, f"{W}_prompt_tokens_total"))
                for _, a, b, dt in points
            ],
            "draft acceptance rate": [
                ratio(rate(a, b, dt, f"{W}_tokens_accepted_total"), rate(a, b, dt, f"{W}_tokens_drafted_total"))
                for _, a, b, dt in points
            ],
            "KV cells used": [
                total(b, "herd_worker_kv_cache_used_cells") / max(total(b, "herd_worker_kv_cache_total_cells"), 1)
                for _, _, b, _ in points
            ],
        }),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), constrained_layout=True)
    for ax, (title, lines) in zip(axes.flat, panels, strict=True):
        for label, values in lines.items():
            ax.plot(t, [float("nan") if v is None else v for v in values], label=label)
        ax.set_title(title)
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    load = os.getloadavg()[0]
    fig.suptitle(
        "herd dashboard (helm/herd/dashboards/herd.json): main panels from /metrics scrapes of a real run "
        f"(bundled model, 1-8 streams; machine load average {load:.1f} on {os.cpu_count()} cores)"
    )
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--every", type=float, default=3.0, help="scrape interval")
    parser.add_argument("--window", type=int, default=5, help="scrapes per rate window")
    parser.add_argument("--out", type=Path, default=Path("helm/herd/dashboards/herd.png"))
    args = parser.parse_args()
    herd = shutil.which("herd")
    assert herd, "the herd command is not installed (pip install -e .)"
    env = {"HERD_SPECULATE": f"{HERD_MODEL}=lookup"}
    with (
        tempfile.TemporaryDirectory() as logs,
        herd_serve("herd", herd, HERD_REDIS_URL, 180, Path(logs), env) as (_, base),
    ):
        scrapes = asyncio.run(drive(base, args.seconds, args.every))
    plot(scrapes, args.window, args.out)
    last = scrapes[-1][1]
    summary = {name: total(last, f"{W}_{name}") for name in ("tokens_drafted_total", "tokens_accepted_total")}
    print(f"{len(scrapes)} scrapes -> {args.out}; at the end: {summary}")


if __name__ == "__main__":
    main()
