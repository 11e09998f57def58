"""The chat page (api/web, served at /chat/) in Debian's headless Chromium driven by playwright-core: a streamed
answer with tokens/s and markdown, a stop that reaches the worker, an answer resumed after a reload, a model's
reasoning folded above its answer, a key asked for and kept out of URLs, the page on another Origin (CORS) and on one
herd does not allow; the shipped bundle is the build of the shipped sources."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from herd.api.auth import credentials

from tests.conftest import MODEL, HerdServer
from tests.thinker import THINKER, thinker_server

ROOT = Path(__file__).parent.parent
WEB = ROOT / "api" / "web"
NODE = Path(__file__).parent / "node"
CHROMIUM = "/usr/bin/chromium"
SECRET = "page-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def browser() -> Path:
    if shutil.which("node") is None or not Path(CHROMIUM).exists():
        pytest.fail("the browser tests need node and Debian's chromium (apt-get install -y nodejs npm chromium)")
    if not (NODE / "node_modules" / "playwright-core").is_dir():
        # Pinned by integrity hash in the lock file, which names no registry (written with
        # --omit-lockfile-registry-resolved).
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE, check=True, timeout=300)
    return NODE


def page(browser: Path, case: str, **args: str) -> dict[str, Any]:
    run = subprocess.run(
        ["node", "chatpage.mjs", case, json.dumps(args)], cwd=browser, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_shipped_bundle_is_the_build_of_the_shipped_sources(tmp_path: Path) -> None:
    sources = subprocess.run([sys.executable, "sources.py"], cwd=WEB, capture_output=True, text=True, check=True)
    assert (WEB / "dist" / "SOURCES.sha256").read_text() == sources.stdout  # src/ changed: run api/web/build.sh
    scripts = list((WEB / "dist" / "assets").glob("*.js"))
    assert len(gzip.compress(b"".join(p.read_bytes() for p in scripts))) <= 300 * 1024
    # A rebuild with the pinned packages gives the same files, byte for byte.
    subprocess.run(["bash", str(WEB / "build.sh"), str(tmp_path / "dist")], check=True, timeout=600)
    shipped = {p.relative_to(WEB / "dist"): p.read_bytes() for p in (WEB / "dist").rglob("*") if p.is_file()}
    rebuilt = {p.relative_to(tmp_path / "dist"): p.read_bytes() for p in (tmp_path / "dist").rglob("*") if p.is_file()}
    assert shipped == rebuilt


def _cancelled(herd: HerdServer) -> set[str]:
    found = set()
    for key in herd.redis.scan_iter(match="herd:stats:*"):
        raw = herd.redis.get(key)
        if raw and b'"cancelled"' in raw:
            found.add(key.decode())
    return found


def test_chat_page_streams_and_stops(server: HerdServer, browser: Path, tmp_path: Path) -> None:
    before = _cancelled(server)
    shot = tmp_path / "chat.png"
    seen = page(browser, "same-origin", page=f"{server.base_url}/chat/", screenshot=str(shot))
    assert seen["models"] == [MODEL]
    lengths = seen["lengths"]
    assert len([n for n in lengths if n > 0]) >= 3 and lengths == sorted(lengths)  # it grew in steps: streamed
    assert seen["text"].strip()
    assert "tokens/s" in seen["stats"] and MODEL in seen["stats"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen["stopped"] == {"grew": False, "stats": 0}  # stopped before its finish chunk, and stayed so
    deadline = time.monotonic() + 60
    while not _cancelled(server) - before:  # the stop closed the stream; the worker dropped the sequence
        assert time.monotonic() < deadline, "the worker never saw the cancel"
        time.sleep(0.2)


def test_chat_page_resumes_an_answer_after_a_reload(server: HerdServer, browser: Path) -> None:
    seen = page(browser, "resume", page=f"{server.base_url}/chat/", maxTokens="400")
    before, after = seen["before"], seen["after"]
    assert before["roles"] == ["user", "assistant"] and before["text"] and not before["finished"]  # mid-answer
    assert seen["reloadedUrl"] == seen["url"] and "#chat-" in seen["url"]  # the same chat after the reload
    assert after["roles"] == ["user", "assistant"] and seen["assistants"] == 1
    assert after["finished"] and after["text"].startswith(before["text"]) and len(after["text"]) > len(before["text"])
    assert "tokens/s" in seen["stats"]
    chat_id = seen["url"].rpartition("#")[2]
    # Asked once; the reload's reconnect replayed the answer (200) instead of asking again.
    assert seen["requests"].count("POST /v1/ui/chat 200") == 1
    assert f"GET /v1/ui/chat/{chat_id}/stream 200" in seen["requests"]


@pytest.fixture(scope="module")
def thinking(redis_port: int, model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    # db 14: `guarded` below holds 15 while this module runs.
    server = thinker_server(redis_port, 14, model_path, tmp_path_factory.mktemp("web-reasoning"))
    yield server
    server.stop()


def test_chat_page_shows_reasoning_folded_above_the_answer(thinking: HerdServer, browser: Path) -> None:
    seen = page(browser, "reasoning", page=f"{thinking.base_url}/chat/", model=THINKER)
    assert seen["parts"] == ["step-start", "reasoning"]  # SmolLM2 never closes `<think>`: all of it is reasoning
    assert seen["blocks"] == 1 and seen["first"] == "DETAILS reasoning"  # above anything else in the answer
    assert seen["summary"] == "Reasoning" and seen["foldedWhenDone"] and seen["hiddenWhenFolded"]
    assert seen["shownWhenOpened"] and seen["text"].strip() and "<think>" not in seen["text"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The same page served by another server (another Origin), at /chat/ as herd serves it."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(WEB / "dist", root / "chat")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def guarded(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    srv = HerdServer(
        redis_port,
        db=15,
        log_path=tmp_path_factory.mktemp("web") / "serve.log",
        HERD_AUTH="on",
        HERD_API_KEYS=credentials.entry("page", SECRET, ["inference", "models:read"]),
        HERD_ORIGINS="http://chat.example:*",
    )
    yield srv
    srv.stop()


def test_chat_page_on_another_origin_with_auth(guarded: HerdServer, browser: Path, elsewhere: int) -> None:
    seen = page(
        browser, "cross-origin", page=f"http://chat.example:{elsewhere}/chat/", herd=guarded.base_url, key=SECRET
    )
    assert seen["text"].strip() and "tokens/s" in seen["text"]
    assert seen["keyInUrl"] is False and seen["storedKey"] is True
    assert "/v1/models" in seen["herdRequests"] and "/v1/ui/chat" in seen["herdRequests"]

    blocked = page(browser, "blocked", page=f"http://evil.example:{elsewhere}/chat/", herd=guarded.base_url)
    assert blocked["alert"].startswith(f"Cannot reach herd at {guarded.base_url}")


def test_the_page_is_its_own_path(server: HerdServer) -> None:
    assert httpx.get(f"{server.base_url}/", timeout=10).text == "Ollama is running"  # what Ollama's clients probe
    index = httpx.get(f"{server.base_url}/chat/", timeout=10)
    assert index.status_code == 200 and '<div id="root">' in index.text and "/chat/assets/" in index.text
