"""All of a worker's llama.cpp work runs on one thread: loading, the speculator's start-up timings and decoding.

llama.cpp's CPU backend is built with OpenMP, and every thread that runs a decode keeps a team of OpenMP worker
threads of its own. A worker that timed decodes on one thread and then decoded on another had more of those
threads than cores, and each later decode waited for wake-ups (a draft-model worker that never drafted ran at
40-44 tok/s against 77 without speculation). The test runs the worker's real start-up (arq's on_startup, real
Redis, the bundled model with prompt lookup) in this process, generates one request through its batcher, and
records the thread of every llama_decode.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import llama_cpp
import redis
from herd.config import load_settings
from herd.inference import GenerationRequest
from herd.workers.jobs import build_worker

DB = 15


async def test_loading_timing_and_decoding_share_one_thread(redis_port: int, monkeypatch: Any) -> None:
    redis.Redis(host="127.0.0.1", port=redis_port, db=DB).flushdb()
    threads: list[int] = []
    real_decode = llama_cpp.llama_decode

    def recording_decode(ctx: Any, batch: Any) -> int:
        threads.append(threading.get_ident())
        result: int = real_decode(ctx, batch)
        return result

    monkeypatch.setattr(llama_cpp, "llama_decode", recording_decode)  # workers/engine.py calls it by module
    settings = load_settings({"HERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/{DB}", "HERD_SPECULATE": ""})
    model = settings.models[0]
    settings = load_settings(
        {"HERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/{DB}", "HERD_SPECULATE": f"{model.name}=lookup"}
    )
    worker = build_worker(settings, settings.models[0])
    ctx: dict[str, Any] = {"redis": worker.pool}
    assert worker.on_startup is not None and worker.on_shutdown is not None
    await worker.on_startup(ctx)
    try:
        timed = len(threads)
        assert timed > 0, "the speculator timed no decodes at start-up"
        request = GenerationRequest(id="engine-thread-1", model=model.name, prompt="Count: 1 2 3 4", max_tokens=8)
        await asyncio.wait_for(ctx["batcher"].run(request), timeout=120)
        assert len(threads) > timed, "the request was not decoded"
    finally:
        await worker.on_shutdown(ctx)
        await worker.pool.aclose()
    assert threading.get_ident() not in threads  # never on the event loop
    assert len(set(threads)) == 1, f"llama_decode ran on {len(set(threads))} threads"
