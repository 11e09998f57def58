"""`/api/create` with `quantize`: an F32/F16/BF16 GGUF quantized by llama.cpp's quantize API in a child process.

The API never loads llama.cpp itself: the child does (as the header check in sandbox.py reads untrusted files in a
child), with a CPU-time limit, and writes into the store's temp area; the result becomes a blob like an upload.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from herd.api.models.gguf import FILE_TYPES, GGUFError, read_info
from herd.errors import EngineError, InvalidRequest

SOURCES = frozenset({"F32", "F16", "BF16"})
# What llama.cpp quantizes to without an importance matrix (the IQ types need one), by Ollama's names.
TARGETS = tuple(
    name
    for name in FILE_TYPES.values()
    if name not in SOURCES and not name.startswith(("IQ", "TQ", "MXFP", "NVFP")) and name not in ("Q1_0", "Q2_0")
)

_QUANTIZE = """
import resource, sys
cpu = int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
import llama_cpp as L
params = L.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = int(sys.argv[5])
rc = L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(0 if rc == 0 else 3)
"""
_CPU_S = 4 * 3600
_TIMEOUT_S = 4 * 3600


def target_type(name: str) -> tuple[str, int]:
    """Ollama's quantization name (any case) -> (canonical name, llama_ftype); a 400 naming `quantize` otherwise."""
    wanted = name.strip().upper()
    for ftype, known in FILE_TYPES.items():
        if known == wanted and known in TARGETS:
            return known, ftype
    names = ", ".join(t.lower().replace("_k", "_K") for t in TARGETS)  # Ollama's spelling: q4_K_M
    raise InvalidRequest(f"unsupported quantization type {name[:40]!r}; use one of {names}", param="quantize")


def source_type(path: Path) -> str:
    """The file type of the model to quantize, which must be unquantized (F32, F16 or BF16)."""
    try:
        kind = read_info(path).quantization
    except (OSError, GGUFError) as exc:
        raise InvalidRequest(f"the model to quantize is not readable: {exc}", param="quantize") from None
    if kind not in SOURCES:
        raise InvalidRequest(
            f"quantize needs an F16, BF16 or F32 model; this one is {kind} (already quantized)", param="quantize"
        )
    return kind


def quantize(source: Path, target: Path, ftype: int) -> None:
    """Write `source` quantized to `ftype` into `target` (blocking: run in a thread)."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(sys.path)}
    threads = str(max(1, len(os.sched_getaffinity(0))))
    argv = [sys.executable, "-c", _QUANTIZE, str(source), str(target), str(ftype), str(_CPU_S), threads]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise EngineError("quantizing took longer than the limit") from None
    if done.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {done.returncode}"]
        raise EngineError(f"llama.cpp could not quantize this model: {lines[-1][-300:]}")
