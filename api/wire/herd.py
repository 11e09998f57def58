"""herd's own API beyond OpenAI and Ollama: what the queue holds, and where a request stands."""

from __future__ import annotations

from typing import Literal

import msgspec


class ModelQueue(msgspec.Struct):
    model: str
    waiting: int  # jobs no worker has started yet
    running: int  # jobs a worker is running
    oldest_wait_s: float  # how long the oldest waiting job has waited (0 when none waits)
    workers: int  # live workers serving the model
    slots_total: int
    slots_busy: int


class QueueStatus(msgspec.Struct):
    models: list[ModelQueue]
    object: Literal["queue"] = "queue"


RequestState = Literal["waiting", "running", "done", "unknown"]


class RequestPosition(msgspec.Struct):
    id: str
    state: RequestState
    model: str | None = None
    position: int | None = None  # 0 = next to start, among the model's waiting jobs
    object: Literal["queue.request"] = "queue.request"
