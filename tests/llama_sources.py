"""llama.cpp's own test data — its collection of model chat templates and its vocab-only GGUFs — read from the
llama.cpp sources vendored in the llama-cpp-python sdist of the installed version.

pip fetches the sdist once (from its cache when it built llama-cpp-python from source); the files the tests use are
unpacked into a cache directory shared by test sessions. Nothing of llama.cpp is kept in the repository.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import llama_cpp

MODELS = "/vendor/llama.cpp/models/"


def _wanted(rest: str) -> bool:
    """The parts of models/ the tests read: the templates, and the vocab-only GGUFs."""
    return (rest.startswith("templates/") and rest.endswith(".jinja")) or (
        "/" not in rest and rest.startswith("ggml-vocab-") and rest.endswith(".gguf")
    )


def _cache_root() -> Path:
    base = os.environ.get("HERD_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "herd-tests"
    )
    return Path(base)


def _download_sdist(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*cmd, "--dest", str(into), f"llama-cpp-python=={version}"], check=True, timeout=900)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download left no llama-cpp-python sdist in {into}")
    return found[0]


def _unpack(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        for member in tar:
            _, sep, rest = member.name.partition(MODELS)
            if not sep or not member.isfile() or not _wanted(rest):
                continue
            source = tar.extractfile(member)
            assert source is not None
            target = dest / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)


@functools.cache
def models_dir() -> Path:
    """llama.cpp's models/ folder (templates/ and ggml-vocab-*.gguf) for the installed llama-cpp-python."""
    root = _cache_root()
    dest = root / f"llama.cpp-models-{llama_cpp.__version__}"
    if (dest / "templates").is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions unpack once
        if not (dest / "templates").is_dir():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                staging = Path(tmp) / "models"
                _unpack(_download_sdist(llama_cpp.__version__, Path(tmp)), staging)
                staging.rename(dest)
    return dest


def templates_dir() -> Path:
    return models_dir() / "templates"


def vocab_path(name: str) -> Path:
    """A vocab-only GGUF of llama.cpp's collection, e.g. `qwen2`, `llama-bpe`, `gemma-4`."""
    return models_dir() / f"ggml-vocab-{name}.gguf"
