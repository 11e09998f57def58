"""herd's Ollama-style CLI (herd.client) driven in a real terminal (a pty) against a real herd with auth on:
a `run` conversation with streaming, slash commands, a multi-line message and Ctrl-C (the cancel reaches the
worker); `pull` and `create -f` with progress bars; `list`, `ps`, `show`, `cp`, `rm`, `stop`; one-line errors."""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from herd.api.auth import credentials
from herd.inference import RequestStats

from tests.conftest import MODEL, HerdServer, free_port
from tests.terminal import Terminal

SECRET = "cli-test-secret-0123456789abcdef"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Iterator[tuple[Path, str]]:
    """A folder with the model file, also served over loopback HTTP (what `pull` downloads)."""
    root = tmp_path_factory.mktemp("files")
    (root / "smol.gguf").symlink_to(model_path)
    (root / "smol-run.gguf").symlink_to(model_path)  # pulled by `herd run` alone
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def herd(redis_port: int, tmp_path_factory: pytest.TempPathFactory, files: tuple[Path, str]) -> Iterator[HerdServer]:
    tmp = tmp_path_factory.mktemp("cli")
    srv = HerdServer(
        redis_port,
        db=15,
        log_path=tmp / "serve.log",
        HERD_AUTH="on",
        HERD_API_KEYS=credentials.entry("cli", SECRET, ["inference", "models:read", "models:admin"]),
        HERD_MODELS_DIR=str(tmp / "models"),
        HERD_PULL_ALLOW=files[1],
        HERD_PULL_ALLOW_PRIVATE="true",
    )
    yield srv
    srv.stop()


@pytest.fixture
def env(herd: HerdServer, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HERD_HOST": f"127.0.0.1:{herd.port}", "HERD_API_KEY": SECRET, "HOME": str(tmp_path)}


def herd_cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herd", *args], env=env, input=stdin, capture_output=True, text=True, timeout=300
    )


def test_run_conversation_in_a_terminal(herd: HerdServer, env: dict[str, str], tmp_path: Path) -> None:
    term = Terminal(["run", MODEL], env)
    try:
        term.expect(">>> ")
        for command, reply in (
            ("/set parameter temperature 0", "Set parameter 'temperature' to '0'"),
            ("/set parameter num_predict 12", "Set parameter 'num_predict' to '12'"),
            ("/set system You are a terse assistant.", "Set system message."),
        ):
            term.type(command + "\n")
            term.expect(reply)
        term.type("What is the capital of France?\n")
        answer = term.expect(r"What is the capital of France\?\n(.+?)\n\n>>> ").group(1)
        assert answer.strip()
        term.type('"""Two lines:\n')  # a multi-line message
        term.expect(r"\.\.\. ")
        term.type('red and blue."""\n')
        term.expect(r"\n\n>>> ")

        # A long answer, stopped with Ctrl-C once it streams: the REPL stays, and the worker drops the sequence.
        before = _cancelled(herd)
        term.type("/set parameter num_predict 1000\n")
        term.expect("Set parameter 'num_predict' to '1000'")
        term.type("Write a very long story about a dragon and a knight.\n")
        term.expect(r"dragon and a knight\.\n\S+ \S+ \S+")  # a few words have streamed
        term.type("\x03")
        term.expect(r"\n\n>>> ")
        deadline = time.monotonic() + 60
        while len(_cancelled(herd)) == len(before):
            assert time.monotonic() < deadline, "the worker never saw the cancel"
            time.sleep(0.2)
        (stats,) = [s for s in _cancelled(herd) if s not in before]
        assert 0 < stats.completion_tokens < 1000

        term.type("/clear\n")
        term.expect("Cleared session context")
        term.type("/bye\n")
        assert term.wait() == 0
    finally:
        term.close()
    history = (tmp_path / ".herd" / "history").read_text()
    assert "What is the capital of France?" in history


def _cancelled(herd: HerdServer) -> list[RequestStats]:
    found = []
    for key in herd.redis.scan_iter(match="herd:stats:*"):
        raw = herd.redis.get(key)
        if raw:
            stats = msgspec.json.decode(raw, type=RequestStats)
            if stats.finish_reason == "cancelled":
                found.append(stats)
    return found


def test_pull_create_and_manage(herd: HerdServer, env: dict[str, str], files: tuple[Path, str], tmp_path: Path) -> None:
    root, url = files
    term = Terminal(["pull", f"{url}smol.gguf"], env)
    try:
        term.expect("━")  # rich's bar, on a terminal
        term.expect(r"100%")
        term.expect("success")
        assert term.wait() == 0
    finally:
        term.close()
    listed = herd_cli(env, "list")
    assert listed.returncode == 0 and listed.stdout.startswith("NAME")
    (pulled,) = set(_names(listed.stdout)) - {MODEL}

    (tmp_path / "Modelfile").write_text(
        f"FROM {root / 'smol.gguf'}\nPARAMETER temperature 0.25\nPARAMETER num_predict 16\n"
        'SYSTEM """You answer in French."""\n'
    )
    term = Terminal(["create", "tiny-fr", "-f", str(tmp_path / "Modelfile")], env, cwd=str(tmp_path))
    try:
        term.expect("copying file|using existing layer")  # the blob upload's bar (or the pull's blob, found)
        term.expect("success")
        assert term.wait() == 0
    finally:
        term.close()
    assert herd_cli(env, "show", "tiny-fr", "--system").stdout.strip() == "You answer in French."
    assert "temperature" in herd_cli(env, "show", "tiny-fr", "--parameters").stdout
    assert "FROM" in herd_cli(env, "show", "tiny-fr", "--modelfile").stdout

    # Not on a terminal: plain progress lines, no bar.
    plain = herd_cli(env, "create", "tiny-fr-2", "-f", str(tmp_path / "Modelfile"))
    assert plain.returncode == 0, plain.stderr
    assert "success" in plain.stderr and "━" not in plain.stderr

    assert herd_cli(env, "cp", "tiny-fr", "tiny-copy").stdout.strip() == "copied 'tiny-fr' to 'tiny-copy'"
    names = _names(herd_cli(env, "list").stdout)
    assert {"tiny-fr:latest", "tiny-fr-2:latest", "tiny-copy:latest", pulled, MODEL} <= set(names)
    removed = herd_cli(env, "rm", "tiny-copy", "tiny-fr-2")
    assert removed.stdout.split("\n")[:2] == ["deleted 'tiny-copy'", "deleted 'tiny-fr-2'"]
    names = _names(herd_cli(env, "list").stdout)
    assert "tiny-copy:latest" not in names and "tiny-fr:latest" in names

    gone = herd_cli(env, "rm", "tiny-copy")
    assert gone.returncode == 1 and gone.stderr.startswith("Error: ") and len(gone.stderr.splitlines()) == 1


def test_run_pulls_a_missing_model_first(herd: HerdServer, env: dict[str, str], files: tuple[Path, str]) -> None:
    _, url = files
    assert "smol-run:latest" not in _names(herd_cli(env, "list").stdout)
    term = Terminal(["run", f"{url}smol-run.gguf"], env)
    try:
        term.expect("━")  # the pull's bar, as `herd pull` shows it
        term.expect(r"100%")
        term.expect("success")
        term.expect(">>> ")  # then the chat, with the model just pulled
        term.type("/set parameter num_predict 8\n")
        term.expect("Set parameter 'num_predict' to '8'")
        term.type("Name a color.\n")
        answer = term.expect(r"Name a color\.\n(.+?)\n\n>>> ").group(1)
        assert answer.strip()
        term.type("/bye\n")
        assert term.wait() == 0
    finally:
        term.close()
    assert "smol-run:latest" in _names(herd_cli(env, "list").stdout)
    # Present now: a second run goes straight to the prompt (nothing is pulled again).
    term = Terminal(["run", f"{url}smol-run.gguf"], env)
    try:
        term.expect(">>> ")
        term.type("/bye\n")
        assert term.wait() == 0
    finally:
        term.close()
    assert "success" not in term.seen and "━" not in term.seen


def test_run_one_shot_and_piped(env: dict[str, str]) -> None:
    # tiny-fr (created above) has num_predict 16 in its Modelfile: a short answer
    shot = herd_cli(env, "run", "tiny-fr", "Say", "hello")
    assert shot.returncode == 0, shot.stderr
    assert shot.stdout.strip()
    piped = herd_cli(env, "run", "tiny-fr", "--verbose", stdin="Name a color.")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip() and "eval rate:" in piped.stderr and "tokens/s" in piped.stderr


def _names(table: str) -> list[str]:
    return [line.split()[0] for line in table.splitlines()[1:]]


def test_ps_and_stop(herd: HerdServer, env: dict[str, str]) -> None:
    ps = herd_cli(env, "ps")
    assert ps.returncode == 0
    header, *rows = ps.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    until = {row.split()[0]: re.split(r"\s{2,}", row)[5] for row in rows}
    assert until[MODEL] == "Forever" and until["tiny-fr:latest"].endswith("from now")
    stop = herd_cli(env, "stop", "tiny-fr")
    assert stop.returncode == 0 and not stop.stdout
    deadline = time.monotonic() + 60
    while "tiny-fr" in herd_cli(env, "ps").stdout:
        assert time.monotonic() < deadline, "the model stayed loaded after herd stop"
        time.sleep(0.5)
    pinned = herd_cli(env, "stop", MODEL)
    assert pinned.returncode == 0 and "stays loaded" in pinned.stdout


def test_errors_are_one_line_with_exit_1(env: dict[str, str]) -> None:
    cases = {
        "is it running?": {**env, "HERD_HOST": f"127.0.0.1:{free_port()}"},
        "HERD_API_KEY": {k: v for k, v in env.items() if k != "HERD_API_KEY"},
        "not found": env,
    }
    for expected, case_env in cases.items():
        result = herd_cli(case_env, "run", "no-such-model", "hi")
        assert result.returncode == 1, result
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: ") and expected in line, line
