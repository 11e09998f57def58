"""BENCHMARK ONLY: where each job's dispatch time goes, read from Redis' MONITOR (bench/scaleout.py prints it).

Redis' MONITOR shows every command, those a Lua script runs included (as client "lua"), with Redis' own clock. From
that the trace follows each job from its admission (the API's EVALSHA naming arq:job:<id>) to its start (the worker's
SET NX of herd:started:<id>) and attributes the time:

- direct: the admission script put it on a worker's queue (ZADD <prefix>:queue:<model>:w:<worker>) and that worker
  started it. Split into admission -> the start's first command (WATCH arq:in-progress:<id> in arq's start_jobs, or
  the EVALSHA of WorkerBus.begin naming that key: the announcement reaching the worker and its event loop getting to
  it) and from there to the start (the in-progress mark, arq's run_job read of the job, herd's claim; since herd's
  claim is made in the start command, arq's run_job read follows it, and "admission->run_job" is the time until the
  job's function runs).
- handed back: put on a worker that would not start it (full after all, or draining), which moved it to the
  overflow (ZADD <prefix>:overflow:<model> after the worker queue's); then as below.
- overflow: the admission found no candidate and put it in the model's overflow.

A job that waited in the overflow left it when some worker's poll script moved it onto that worker's queue (a
worker-queue ZADD after the overflow's): "taken after a job end" when that worker had a job end (the ledger ZREM of a
job it started) within TRIGGER_WINDOW_S before, "after a hand-back" when it had just handed a job back itself,
otherwise "by a periodic poll" (arq's 0.5 s fallback, or an early poll for another reason). For each job admitted to
the overflow the trace also counts the fleet's truly free slots at that moment: slots minus jobs placed on workers'
queues (directly or taken) and not ended or handed back since. Free slots there mean the API's view was wrong.

The fleet hosts (bench/fleet.py --lag-file) sample their event loop's lag; `loop_lag` summarises those files.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from herd import channels

_IN_PROGRESS = "arq:in-progress:"
TRIGGER_WINDOW_S = 0.1  # a take this soon after the worker's own job end / hand-back is taken to be caused by it


@dataclass
class Job:
    admitted: float = 0.0
    path: str = ""  # direct, handed back, overflow
    placed: float = 0.0  # last put on a worker's queue (admission or take)
    worker: str = ""
    to_overflow: float = 0.0  # last put in the overflow
    overflow_wait_s: float = 0.0
    taken_by: str = ""  # job end, hand-back, periodic poll
    free_at_admission: int = -1  # overflow admissions only: the fleet's truly free slots then
    watch: float = 0.0
    in_progress: float = 0.0  # arq's in-progress key set (start_jobs done)
    run_job: float = 0.0  # arq's run_job read the job
    started: float = 0.0
    ended: float = 0.0


@dataclass
class Trace:
    """What MONITOR showed, as (time, kind, job id, worker id) events, kept in arrival order."""

    model: str
    events: list[tuple[float, str, str, str]] = field(default_factory=list)
    # hand-back scripts run, by what the worker held then (replay counts them): a job it took from the overflow (which
    # the API did not count), a job with all its tokens out that arq had not ended yet, or only jobs the API sent it
    givebacks: Counter[str] = field(default_factory=Counter)


class Monitor:
    """Redis' MONITOR in a thread, keeping only the commands the dispatch trace needs (cheap: the load generator shares
    this process). dispatch_ms() stops it and returns the classic figures; breakdown() the attribution."""

    def __init__(self, port: int, model: str) -> None:
        self.trace = Trace(model)
        self._client = redis.Redis(port=port)
        self._stop = threading.Event()
        self._worker_q = channels.worker_queue(model, "")
        self._overflow = channels.overflow(model)
        self._ledger = channels.queue(model)
        self._started = channels.started("")
        self._stats = channels.stats("")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        add = self.trace.events.append
        with self._client.monitor() as monitor:
            for item in monitor.listen():
                if self._stop.is_set():
                    return
                words = item["command"].split()
                if len(words) < 2:
                    continue
                t, verb, key = item["time"], words[0].upper(), words[1]
                if verb == "EVALSHA" and len(words) > 3:
                    if words[3].startswith("arq:job:"):  # the admission: KEYS job, result, ledger, ...
                        add((t, "admit", words[3].removeprefix("arq:job:"), ""))
                    elif words[3].startswith(self._worker_q) and len(words) > 4 and words[4].startswith(_IN_PROGRESS):
                        # a worker's start of a job (WorkerBus.begin): its check-and-mark, as arq's WATCH began it
                        add((t, "watch", words[4].removeprefix(_IN_PROGRESS), ""))
                    elif words[3].startswith(self._worker_q) and len(words) > 4 and words[4] == self._overflow:
                        # a poll (5 keys) or a hand-back (2 keys: ARGV[1] the in-progress prefix, then ids)
                        kind = "giveback" if words[2] == "2" else "poll"
                        add((t, kind, "", words[3].removeprefix(self._worker_q)))
                elif verb == "ZADD" and item["client_type"] == "lua" and len(words) >= 4:
                    if key.startswith(self._worker_q):
                        add((t, "to_worker", words[3], key.removeprefix(self._worker_q)))
                    elif key == self._overflow:
                        add((t, "to_overflow", words[3], ""))
                elif verb == "PSETEX" and key.startswith(_IN_PROGRESS):
                    add((t, "in_progress", key.removeprefix(_IN_PROGRESS), ""))
                elif verb == "GET" and key.startswith("arq:job:"):
                    add((t, "run_job", key.removeprefix("arq:job:"), ""))
                elif verb == "WATCH" and key.startswith(_IN_PROGRESS):
                    add((t, "watch", key.removeprefix(_IN_PROGRESS), ""))
                elif verb == "SET" and key.startswith(self._stats):
                    add((t, "generated", key.removeprefix(self._stats), ""))
                elif verb == "SET" and key.startswith(self._started) and len(words) > 2:
                    add((t, "started", key.removeprefix(self._started), words[2]))
                elif verb == "ZREM" and key == self._ledger and item["client_type"] != "lua" and len(words) > 2:
                    add((t, "ended", words[2], ""))

    def stop(self) -> None:
        self._stop.set()
        self._client.set("bench-monitor-wakeup", 1)
        self._thread.join(10)
        self._client.close()

    def jobs(self, slots: int) -> dict[str, Job]:
        return replay(self.trace, slots)


def replay(trace: Trace, slots: int) -> dict[str, Job]:
    """Each job's history from the events, with the fleet's true occupancy kept along the way."""
    trace.givebacks = Counter()
    jobs: dict[str, Job] = defaultdict(Job)
    occupying: set[str] = set()  # jobs on a worker's queue or running there, not ended or handed back
    last_end: dict[str, float] = {}  # worker -> its latest job end
    last_giveback: dict[str, float] = {}
    finishing: dict[str, set[str]] = defaultdict(set)  # worker -> its jobs generated (stats stored), not ended yet
    held: dict[str, dict[str, str]] = defaultdict(dict)  # worker -> its occupying jobs -> "sent" or "taken"
    for t, kind, rid, worker in trace.events:
        if kind == "giveback":
            last_giveback[worker] = t
            if any(origin == "taken" for origin in held[worker].values()):
                trace.givebacks["holding a job it took from the overflow"] += 1
            elif finishing[worker]:
                trace.givebacks["finishing a job"] += 1
            else:
                trace.givebacks["only jobs the API sent it"] += 1
            continue
        if kind == "poll":
            continue
        job = jobs[rid]
        if kind == "admit":
            job.admitted = job.admitted or t
        elif kind == "to_worker":
            if job.path and job.to_overflow >= job.placed and job.to_overflow:  # taken from the overflow
                job.overflow_wait_s += t - job.to_overflow
                if t - last_end.get(worker, -1e9) <= TRIGGER_WINDOW_S:
                    job.taken_by = "job end"
                elif t - last_giveback.get(worker, -1e9) <= TRIGGER_WINDOW_S:
                    job.taken_by = "hand-back"
                else:
                    job.taken_by = "periodic poll"
            held[worker][rid] = "taken" if job.path else "sent"
            job.path = job.path or "direct"
            job.placed, job.worker = t, worker
            occupying.add(rid)
        elif kind == "to_overflow":
            if not job.path:
                job.path = "overflow"
                job.free_at_admission = slots - len(occupying)
            elif job.path == "direct":
                job.path = "handed back"
            job.to_overflow = t
            occupying.discard(rid)
            held[job.worker].pop(rid, None)
        elif kind == "watch":
            job.watch = job.watch or t
        elif kind == "in_progress":
            job.in_progress = job.in_progress or t
        elif kind == "run_job":
            job.run_job = job.run_job or t
        elif kind == "started":
            job.started = job.started or t
            job.worker = worker
        elif kind == "generated":
            if job.worker:
                finishing[job.worker].add(rid)
        elif kind == "ended":
            job.ended = t
            finishing[job.worker].discard(rid)
            held[job.worker].pop(rid, None)
            occupying.discard(rid)
            if job.worker:
                last_end[job.worker] = t
    return jobs


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _p(values: list[float]) -> str:
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}" if values else "-"


def breakdown(jobs: dict[str, Job], ids: list[str], trace: Trace | None = None) -> dict[str, Any]:
    """Per path: how many, dispatch p50/p99, and its phases (ms); for the overflow, what took the jobs out and the
    truly free slots at their admission."""
    done = [jobs[r] for r in ids if r in jobs and jobs[r].admitted and jobs[r].started]
    out: dict[str, Any] = {"jobs": len(done)}
    if trace is not None:
        out["hand_backs_by_what_the_worker_held"] = dict(trace.givebacks)
    for path in ("direct", "handed back", "overflow"):
        group = [j for j in done if j.path == path]
        row: dict[str, Any] = {
            "count": len(group),
            "dispatch_ms": [(j.started - j.admitted) * 1000 for j in group],
            "to_watch_ms": [(j.watch - j.placed) * 1000 for j in group if j.watch >= j.placed],
            "watch_to_start_ms": [(j.started - j.watch) * 1000 for j in group if j.watch],
            "watch_to_in_progress_ms": [(j.in_progress - j.watch) * 1000 for j in group if j.watch and j.in_progress],
            "in_progress_to_run_ms": [(j.run_job - j.in_progress) * 1000 for j in group if j.run_job and j.in_progress],
            "run_to_start_ms": [(j.started - j.run_job) * 1000 for j in group if j.run_job and j.started >= j.run_job],
            # herd's claim made in the start command (WorkerBus.begin) comes before arq's run_job reads the job:
            "start_to_run_ms": [(j.run_job - j.started) * 1000 for j in group if j.run_job > j.started],
            "admit_to_run_ms": [(j.run_job - j.admitted) * 1000 for j in group if j.run_job],
        }
        if path != "direct":
            row["overflow_wait_ms"] = [j.overflow_wait_s * 1000 for j in group]
            row["taken_by"] = dict(Counter(j.taken_by or "?" for j in group))
        if path == "overflow":
            row["free_slots_at_admission"] = [j.free_at_admission for j in group]
        out[path] = row
    return out


def format_breakdown(b: dict[str, Any]) -> list[str]:
    lines = [f"  dispatch breakdown of {b['jobs']} jobs (ms, p50 / p99):"]
    for path in ("direct", "handed back", "overflow"):
        row = b[path]
        if not row["count"]:
            lines.append(f"    {path:12s}    0")
            continue
        text = (
            f"    {path:12s} {row['count']:4d} ({100 * row['count'] / max(b['jobs'], 1):4.1f} %): "
            f"dispatch {_p(row['dispatch_ms'])}; placed->WATCH {_p(row['to_watch_ms'])}, "
            f"WATCH->start {_p(row['watch_to_start_ms'])} (WATCH->in-progress {_p(row['watch_to_in_progress_ms'])}, "
            f"->run_job {_p(row['in_progress_to_run_ms'])}, ->claim {_p(row['run_to_start_ms'])})"
        )
        if row["start_to_run_ms"]:
            text += f"; claimed in the start, then arq's run_job {_p(row['start_to_run_ms'])}"
        text += f"; admission->run_job {_p(row['admit_to_run_ms'])}"
        if "overflow_wait_ms" in row:
            text += f"; in overflow {_p(row['overflow_wait_ms'])}, taken by {row['taken_by']}"
        if "free_slots_at_admission" in row:
            free = row["free_slots_at_admission"]
            text += f"; truly free slots at admission: p50 {percentile(free, 0.5)}, >0 in {sum(f > 0 for f in free)}"
        lines.append(text)
    if b.get("hand_backs_by_what_the_worker_held"):
        lines.append(f"    hand-backs, by what the worker held: {b['hand_backs_by_what_the_worker_held']}")
    return lines


def summary(b: dict[str, Any]) -> dict[str, Any]:
    """The JSON form: percentiles instead of every sample."""
    out: dict[str, Any] = {k: v for k, v in b.items() if k not in ("direct", "handed back", "overflow")}
    for path in ("direct", "handed back", "overflow"):
        row = dict(b[path])
        for name in [k for k in row if k.endswith("_ms")]:
            values = row.pop(name)
            row[name.removesuffix("_ms") + "_p50_ms"] = round(percentile(values, 0.5), 2)
            row[name.removesuffix("_ms") + "_p99_ms"] = round(percentile(values, 0.99), 2)
        if "free_slots_at_admission" in row:
            free = row.pop("free_slots_at_admission")
            row["free_slots_at_admission_p50"] = percentile(free, 0.5)
            row["admitted_to_overflow_with_free_slots"] = sum(f > 0 for f in free)
        out[path] = row
    return out


def loop_lag(files: list[Path], start: float, end: float) -> dict[str, Any]:
    """p50 / p99 / max (ms) of the hosts' event-loop lag and of their Redis PING round trips, sampled between `start`
    and `end` (time.time())."""
    found: dict[str, list[float]] = {"lag": [], "rtt": []}
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            t, kind, ms = line.split()
            if start <= float(t) <= end:
                found[kind].append(float(ms))
    return {
        kind: {
            "samples": len(values),
            "p50_ms": round(percentile(values, 0.5), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "max_ms": round(max(values), 2),
        }
        for kind, values in found.items()
        if values
    }
