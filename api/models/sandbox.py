"""Check an uploaded or downloaded GGUF's header in a child process with memory and CPU limits.

A crafted header (nesting deep enough to exhaust the stack, strings that claim gigabytes, endless counts) can
then cost at most that child; the API parses only files this check passed, with the same parser, so those parses
end too. llama.cpp itself reads a model only in a worker process, whose death the supervisor reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from herd.errors import InvalidRequest

# The child limits itself before it reads a byte of the file (no preexec_fn: the API has threads, and fork
# with a Python callback is not safe then).
_CHECK = """
import resource, sys
limit, cpu = int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
from herd.api.models.gguf import read_info
read_info(sys.argv[1])
"""
_TIMEOUT_S = 60
_CPU_S = 30
_HEADROOM = 1 << 30  # address space beyond the file itself (it is mmapped whole)


def check_gguf(path: Path, label: str) -> None:
    """InvalidRequest unless `path` is a GGUF whose header parses within the limits (blocking: run in a thread)."""
    limit = os.stat(path).st_size + _HEADROOM
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHECK, str(path), str(limit), str(_CPU_S)],
            env=env,
            capture_output=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidRequest(f"{label} is not a usable GGUF model: reading its header took too long") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {done.returncode}"]
        raise InvalidRequest(f"{label} is not a GGUF model: {lines[-1][-300:]}")
