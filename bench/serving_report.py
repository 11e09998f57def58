"""What one run of bench/serving.py measured (a Run per system and concurrency) and its report: the table, the
ratios against the targets of issue 5, with a verdict that says when other processes disturbed the figures."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.common import NOISY_CORES, StreamResult, fmt, percentile, ratio


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
