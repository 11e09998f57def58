"""What the benchmarks share: free ports, the prompts and the streaming client, CPU accounting, and starting
`herd serve` and llama.cpp's llama-server, waiting for them to be ready and always stopping them.

Run the benchmarks as modules from the repository root (`python -m bench.serving`), so that this one is importable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
HERD_MODEL = "smollm2:135m"
HERD_REDIS_URL = "redis://127.0.0.1:6379/14"
NOISY_CORES = 0.1  # other processes using more than this during a measurement make its comparison unreliable
SUBJECTS = (
    "a dragon who guards a library",
    "a lighthouse keeper and a storm",
    "a robot learning to paint",
    "two rival bakers in a small town",
    "a ship lost in the northern ice",
    "a girl who can talk to rivers",
    "the last tree on a dry planet",
    "a clockmaker who repairs time",
)
PROMPTS = tuple(
    f"<|im_start|>user\nWrite a long, detailed story about {s}.<|im_end|>\n<|im_start|>assistant\n" for s in SUBJECTS
)


@dataclass
class StreamResult:
    """One streamed completion as seen by the client."""

    ok: bool
    tokens: int = 0
    text_chunks: int = 0
    usage_tokens: int | None = None  # completion_tokens of the final usage chunk, when the server sent one
    cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens: prompt tokens the server did not prefill
    ttft_s: float | None = None  # request sent -> first non-empty text chunk
    decode_s: float = 0.0  # first non-empty text chunk -> last non-empty text chunk
    total_s: float = 0.0
    error: str = ""
    usage: dict[str, Any] = field(default_factory=dict)  # the final usage chunk as sent (extension fields too)
    gaps_s: list[float] = field(default_factory=list)  # between consecutive non-empty text chunks (inter-token latency)

    @property
    def decode_tps(self) -> float | None:
        if self.tokens < 2 or self.decode_s <= 0:
            return None
        return (self.tokens - 1) / self.decode_s


def percentile(values: list[float], pct: float) -> float | None:
    """Linear-interpolation percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def default_model_path() -> str:
    from herd.config import bundled_model_path

    return bundled_model_path()


# ---------------------------------------------------------------------------------------------------------------
# CPU accounting: the machine has 2 cores, so anything else running skews the figures; measure it, do not guess


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_s() -> float | None:
    """CPU seconds spent busy by all cores since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def procs_cpu_s(session: int | None, names: tuple[str, ...]) -> float:
    """CPU seconds of the live processes in a session, plus those whose command name is in names."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        rest = raw[raw.rfind(")") + 2 :].split()
        if (session is not None and int(rest[3]) == session) or comm in names:
            total += int(rest[11]) + int(rest[12])  # utime + stime
    return total / CLK_TCK


class CpuMeter:
    """CPU used by other processes (not this script, not the server's session, not the named helpers) over a span."""

    def __init__(self, session: int | None = None, helpers: tuple[str, ...] = ()) -> None:
        self.session, self.helpers = session, helpers
        self._start: tuple[float, float, float] | None = None

    def _ours(self) -> float:
        return time.process_time() + procs_cpu_s(self.session, self.helpers)

    def start(self) -> None:
        busy = machine_busy_s()
        self._start = None if busy is None else (busy, self._ours(), time.monotonic())

    def other_cores(self) -> float | None:
        busy = machine_busy_s()
        if self._start is None or busy is None:
            return None
        busy0, ours0, t0 = self._start
        elapsed = time.monotonic() - t0
        return max(0.0, (busy - busy0) - (self._ours() - ours0)) / elapsed if elapsed > 0 else None


RUN_LOCK = Path(tempfile.gettempdir()) / "herd-bench-serving.lock"


def acquire_run_lock(max_wait_s: float) -> Any:
    """Hold an exclusive lock for the whole run, so that two benchmark runs never measure at the same time.

    Returns the open lock file (keep a reference; the lock goes with the process); exits if it stays taken.
    """
    lock_file = RUN_LOCK.open("a")
    deadline = time.monotonic() + max_wait_s
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock_file
        except BlockingIOError:
            if time.monotonic() > deadline:
                sys.exit(f"another benchmark run still holds {RUN_LOCK} after {max_wait_s:.0f} s")
            print(f"another benchmark run is measuring ({RUN_LOCK}); waiting for it", flush=True)
            time.sleep(10.0)


def wait_for_quiet(limit_cores: float, max_wait_s: float) -> float | None:
    """Wait (bounded) until other processes use less than limit_cores; return the last measured load."""
    deadline = time.monotonic() + max_wait_s
    while True:
        meter = CpuMeter()
        meter.start()
        time.sleep(2.0)
        load = meter.other_cores()
        if load is None or load < limit_cores or time.monotonic() > deadline:
            return load
        print(f"  machine busy ({load:.2f} cores used by other processes); waiting for it to calm down", flush=True)
        time.sleep(5.0)


# ---------------------------------------------------------------------------------------------------------------
# Load generation: one streamed completion, timed


async def stream_completion(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], timeout_s: float
) -> StreamResult:
    """POST one streaming /v1/completions request and time its SSE chunks."""
    result = StreamResult(ok=False)
    t_send = time.perf_counter()
    t_first: float | None = None
    t_last = t_send
    try:
        async with asyncio.timeout(timeout_s), client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"in-band error: {json.dumps(chunk['error'])[:200]}"
                    return result
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    result.usage_tokens = int(usage["completion_tokens"])
                    result.usage = usage
                    result.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
                for choice in chunk.get("choices") or ():
                    if choice.get("text"):
                        now = time.perf_counter()
                        if t_first is None:
                            t_first = now
                        t_last = now
                        result.text_chunks += 1
    except TimeoutError:
        result.error = f"timed out after {timeout_s:.0f} s ({result.text_chunks} text chunks received)"
        return result
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
        return result
    result.total_s = time.perf_counter() - t_send
    result.tokens = result.usage_tokens if result.usage_tokens is not None else result.text_chunks
    if t_first is not None:
        result.ttft_s = t_first - t_send
        result.decode_s = t_last - t_first
    result.ok = result.tokens > 0 and t_first is not None
    if not result.ok:
        result.error = "no text received"
    return result


def request_body(model: str, prompt: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------------
# Servers


@contextlib.contextmanager
def managed_server(
    name: str, cmd: list[str], env: dict[str, str], ready_url: str, ready_timeout_s: float, log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server in its own process group, wait until ready_url answers 200, and always stop the whole group."""
    log_path = log_dir / f"{name.replace(' ', '_')}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}; log: {log_path}")
            try:
                if httpx.get(ready_url, timeout=2.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {ready_timeout_s:.0f} s; log: {log_path}")
            time.sleep(0.25)
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created, then SIGKILL it if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; give its children (herd's API and worker) a moment, then make sure of them
        time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def llama_server_supports(binary: str, flag: str) -> bool:
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in out.stdout + out.stderr


def llama_server_flags(binary: str) -> list[str]:
    """Flags every llama-server run gets: no web UI, and herd's CPU weight layout (HERD_CPU_REPACK=auto)."""
    from herd.workers.engine import extra_buffers

    flags = ["--no-webui"] if llama_server_supports(binary, "--no-webui") else []
    if not extra_buffers("auto") and llama_server_supports(binary, "--no-repack"):
        flags.append("--no-repack")
    return flags


@contextlib.contextmanager
def herd_serve(
    name: str, herd: str, redis_url: str, ready_timeout_s: float, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`herd serve` on a free port over the Redis database at redis_url (flushed first); yields the process and its
    base URL once /readyz answers 200. env adds settings (HERD_MODELS, ...)."""
    flush_redis(redis_url)
    port = free_port()
    full_env = {**os.environ, "HERD_REDIS_URL": redis_url, **(env or {})}
    cmd = [herd, "serve", "--host", HOST, "--port", str(port)]
    base = f"http://{HOST}:{port}"
    with managed_server(name, cmd, full_env, f"{base}/readyz?workers=1", ready_timeout_s, log_dir) as proc:
        yield proc, base


@contextlib.contextmanager
def llama_server(
    binary: str, model_path: str, n_parallel: int, threads: int, ready_timeout_s: float, log_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """llama.cpp's llama-server with n_parallel slots of 2048 tokens each on a free port; yields the process and its
    base URL once /health answers 200. Its name in logs and reports is `llama-server -np N`."""
    port = free_port()
    cmd = [binary, "-m", model_path, "-c", str(2048 * n_parallel), "-np", str(n_parallel), "-t", str(threads)]
    cmd += ["--host", HOST, "--port", str(port), *llama_server_flags(binary)]
    base = f"http://{HOST}:{port}"
    name = f"llama-server -np {n_parallel}"
    with managed_server(name, cmd, dict(os.environ), f"{base}/health", ready_timeout_s, log_dir) as proc:
        yield proc, base


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den
