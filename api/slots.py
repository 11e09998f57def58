"""The API's view of each worker's free slots between its heartbeats (the dispatch choice: README, Scale-out).

A heartbeat is up to a second old when read. What this process did since is added to it, per job, never per count:

    sent(worker, job, stamp)   an admission put a job on the worker's queue; its announcement carries `stamp` (Redis'
                               clock). Busy until a heartbeat says the worker handled that announcement
                               (WorkerStatus.announced >= stamp): from then on the heartbeat's own list says whether
                               the job holds a slot (started) or not (handed back, or over already).
    ended(worker, job)         the job's last event came: its slot is free, though a heartbeat may still list it
                               (WorkerStatus.holding). Forgotten once no heartbeat lists it and nothing sent waits.
    choosing(worker)           an admission that will probably pick the worker is under way: busy meanwhile, so the
                               requests of a burst do not all pick the one worker that looked the freest.

A worker that reports no stamps (announced -1: an older herd) is taken at its heartbeat's word.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from herd.inference import WorkerStatus


class SlotView:
    def __init__(self) -> None:
        self._sent: dict[str, dict[str, int]] = {}  # worker id -> job id -> announcement stamp, not yet in a heartbeat
        self._ended: dict[str, set[str]] = {}  # worker id -> jobs that ended here, while a heartbeat may list them
        self._choosing: dict[str, int] = {}  # worker id -> admissions under way that will probably choose it

    def free(self, worker: WorkerStatus) -> int:
        """Slots of `worker` free now, as far as this process knows."""
        busy = worker.slots_busy + self._choosing.get(worker.worker_id, 0)
        if worker.announced >= 0:
            held, ended = set(worker.holding), self._ended.get(worker.worker_id, set())
            busy -= len(held & ended)
            known = held | ended
            sent = self._sent.get(worker.worker_id, {})
            busy += sum(1 for job, stamp in sent.items() if stamp > worker.announced and job not in known)
        return min(worker.slots_total, worker.slots_total - busy)

    @contextmanager
    def choosing(self, worker_id: str) -> Iterator[None]:
        self._choosing[worker_id] = self._choosing.get(worker_id, 0) + 1
        try:
            yield
        finally:
            self._choosing[worker_id] -= 1
            if not self._choosing[worker_id]:
                del self._choosing[worker_id]

    def sent(self, worker_id: str, job_id: str, stamp: int) -> None:
        self._sent.setdefault(worker_id, {})[job_id] = stamp

    def ended(self, worker_id: str, job_id: str) -> None:
        self._ended.setdefault(worker_id, set()).add(job_id)

    def refresh(self, workers: list[WorkerStatus]) -> None:
        """New heartbeats: forget what they account for, and the workers gone."""
        beats = {w.worker_id: w for w in workers}
        sent: dict[str, dict[str, int]] = {}
        for worker_id, jobs in self._sent.items():
            w = beats.get(worker_id)
            if w is not None and w.announced >= 0:
                waiting = {job: stamp for job, stamp in jobs.items() if stamp > w.announced}
                if waiting:
                    sent[worker_id] = waiting
        ended: dict[str, set[str]] = {}
        for worker_id, gone in self._ended.items():
            w = beats.get(worker_id)
            if w is not None and w.announced >= 0:
                listed = (gone & set(w.holding)) | (gone & sent.get(worker_id, {}).keys())
                if listed:
                    ended[worker_id] = listed
        self._sent, self._ended = sent, ended
