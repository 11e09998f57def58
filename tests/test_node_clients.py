"""The JavaScript clients apps are written against: the `openai` npm package and the Vercel AI SDK
(`ai` + `@ai-sdk/openai-compatible`), run with node against a real server (tests/node/clients.mjs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from tests.conftest import MODEL, HerdServer

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_clients() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the JavaScript client tests (Debian: apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "zod").is_dir():
        # The lock file pins every package by integrity hash and was written with
        # --omit-lockfile-registry-resolved, so no registry address lands in the repository.
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return NODE_DIR


def test_openai_npm_and_vercel_ai_sdk(server: HerdServer, node_clients: Path) -> None:
    run = subprocess.run(
        ["node", "clients.mjs", server.base_url, MODEL],
        cwd=node_clients,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)

    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as sdk:
        python = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name three colors."}],
            max_tokens=16,
            temperature=0,
        )
    expected = python.choices[0].message.content
    assert expected
    for client in ("openaiChat", "openaiStream", "aiGenerate", "aiStream"):
        assert seen[client]["text"] == expected, client
    assert seen["openaiStream"]["finish"] == python.choices[0].finish_reason
    assert seen["aiGenerate"]["finishReason"] == seen["aiStream"]["finishReason"] == "stop"
    assert python.usage is not None
    assert seen["openaiStream"]["usage"]["completion_tokens"] == python.usage.completion_tokens
    for client in ("aiGenerate", "aiStream"):
        usage = seen[client]["usage"]
        assert (usage["inputTokens"], usage["outputTokens"]) == (
            python.usage.prompt_tokens,
            python.usage.completion_tokens,
        )
    assert seen["openaiChat"]["id"].startswith("chatcmpl-")
    assert seen["openaiEmbeddings"] == {"count": 2, "dims": 576}  # base64 by default, decoded by the client
    assert seen["aiEmbed"] == {"count": 3, "dims": 576}
    assert seen["openaiNotFound"] == {"status": 404, "name": "NotFoundError"}

    # openai npm, streamed tool call: one call, id and name once each, arguments in fragments that parse.
    [call] = seen["openaiToolStream"]["calls"]
    assert call["id"].startswith("call_") and call["name"] == "get_weather" and call["deltas"] > 2
    assert isinstance(json.loads(call["arguments"])["city"], str)
    assert seen["openaiToolStream"]["finish"] == "tool_calls"

    # Vercel AI SDK: the tool ran on the model's call and its result went back for a text answer.
    first, second = seen["aiTools"]["steps"]
    assert first["finishReason"] == "tool-calls"
    assert [c["name"] for c in first["toolCalls"]] == ["weather"]
    city = first["toolCalls"][0]["input"]["city"]
    assert first["toolResults"] == [{"city": city, "temperature": 21, "sky": "clear"}]
    assert second["toolCalls"] == [] and second["finishReason"] in ("stop", "length")
    assert seen["aiTools"]["text"]

    # generateObject with a zod schema: an object that fits it (the SDK validated it too).
    assert set(seen["aiObject"]["object"]) == {"name", "color"}
    assert len(seen["aiObject"]["object"]["name"]) <= 30
    assert seen["aiObject"]["finishReason"] == "stop"
