"""`herd pull`: the API's pull code as a one-shot command (the Kubernetes init step), over a loopback file server."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from herd.api.models.store import ModelStore
from herd.config import load_settings

from tests.conftest import free_port


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, model_path: str) -> Iterator[str]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "smol.gguf").symlink_to(model_path)
    (root / "not-a-model.gguf").write_bytes(b"hello" * 100)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def herd_pull(models_dir: Path, base: str, *models: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HERD_MODELS_DIR": str(models_dir),
        "HERD_PULL_ALLOW": base,
        "HERD_PULL_ALLOW_PRIVATE": "true",  # the file server is on loopback
        "HERD_HOST": f"127.0.0.1:{free_port()}",  # no herd answers there: the local path (else it pulls through it)
    }
    return subprocess.run(
        [sys.executable, "-m", "herd", "pull", *models], env=env, capture_output=True, text=True, timeout=300
    )


def test_pull_fills_the_store_once(tmp_path: Path, served: str, model_path: str) -> None:
    models = tmp_path / "models"
    first = herd_pull(models, served, f"{served}smol.gguf")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1].endswith(": success")
    store = ModelStore(models)
    (name,) = store.all()
    manifest = store.all()[name]
    assert store.model_path(manifest).stat().st_size == Path(model_path).stat().st_size
    again = herd_pull(models, served, f"{served}smol.gguf")  # an init step runs at every pod start
    assert again.returncode == 0 and list(ModelStore(models).all()) == [name]
    # The worker that loads it gets the store's model configuration.
    config = store.model_config(manifest, load_settings({"HERD_MODELS": "x=/x.gguf"}))
    assert config.name == name and Path(config.path).is_file()


def test_pull_failures_exit_nonzero_with_the_reason(tmp_path: Path, served: str) -> None:
    models = tmp_path / "models"
    not_gguf = herd_pull(models, served, f"{served}not-a-model.gguf")
    assert not_gguf.returncode == 1 and "GGUF" in not_gguf.stderr.upper()
    outside = herd_pull(models, served, "https://elsewhere.invalid/m.gguf")
    assert outside.returncode == 1 and "HERD_PULL_ALLOW" in outside.stderr
    assert "Traceback" not in not_gguf.stderr + outside.stderr
