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
    if not (NODE_DIR / "node_modules" / "ai").is_dir():
        # Exact versions in package.json; no lock file, so no registry address lands in the repository.
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"],
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
        timeout=180,
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
