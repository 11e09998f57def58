"""A stream that waits in the queue gets its 200 and SSE keep-alive comments until a worker takes it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, HerdServer


@pytest.fixture(scope="module")
def busy_server(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    """One sequence at a time, and a short patience before a queued stream opens with keep-alives."""
    srv = HerdServer(
        redis_port,
        db=9,
        log_path=tmp_path_factory.mktemp("keepalive") / "serve.log",
        HERD_MAX_SEQS="1",
        HERD_SSE_COMMIT_AFTER_S="0.3",
        HERD_SSE_KEEPALIVE_S="0.3",
    )
    yield srv
    srv.stop()


def occupy(server: HerdServer) -> threading.Thread:
    """A long request holding the only sequence; returns once its first token arrived (so a worker runs it)."""
    running = threading.Event()

    def run() -> None:
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 160, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=600) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    running.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert running.wait(timeout=300), "the long request never started"
    return thread


def raw_stream(server: HerdServer, body: dict[str, Any]) -> tuple[int, list[str]]:
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=600) as resp:
        return resp.status_code, [line for line in resp.iter_lines() if line]


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}


def test_queued_stream_keeps_alive_then_streams(busy_server: HerdServer) -> None:
    blocker = occupy(busy_server)
    status, lines = raw_stream(busy_server, {**CHAT, "stream": True})
    blocker.join()
    assert status == 200
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data > 0 and all(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"
    assert not any(line.startswith(":") for line in lines[first_data:])  # comments only while queued

    # The SDK skips the comments: the text is the one a quiet server gives.
    with openai.OpenAI(base_url=f"{busy_server.base_url}/v1", api_key="x", max_retries=0, timeout=600) as sdk:
        quiet = sdk.chat.completions.create(**CHAT).choices[0].message.content  # type: ignore[call-overload]
        blocker = occupy(busy_server)
        text = "".join(
            (c.choices[0].delta.content or "") if c.choices else ""
            for c in sdk.chat.completions.create(**CHAT, stream=True)  # type: ignore[call-overload]
        )
        blocker.join()
    assert text == quiet


def test_an_error_after_the_keep_alives_is_an_in_band_frame(busy_server: HerdServer) -> None:
    blocker = occupy(busy_server)
    too_long = {**CHAT, "messages": [{"role": "user", "content": "word " * 3000}], "stream": True}
    status, lines = raw_stream(busy_server, too_long)
    blocker.join()
    assert status == 200  # committed while it waited
    assert lines[0] == ": keep-alive"
    errors = [line for line in lines if line.startswith('data: {"error"')]
    assert len(errors) == 1 and "context_length_exceeded" in errors[0]
    assert lines[-1] == "data: [DONE]"
