"""Redis connection settings (shared/redisconn.py) against private redis-servers this module starts: an ACL user
over TLS serving real requests, wrong credentials stopping `herd api` and `herd worker` with one clear line, and
a Sentinel naming the master. The shared Redis on 6379 is never reconfigured."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import openai
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from herd import redisconn
from herd.config import Settings

from tests.conftest import free_port

USER, PASSWORD = "herd-app", "s3cret-for-tests"


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "herd test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem(key))
    return paths


def wait_redis(port: int, proc: subprocess.Popen[bytes], **auth: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited")
        try:
            if redis.Redis(port=port, socket_connect_timeout=1, **auth).ping():  # type: ignore[arg-type]
                return
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not answer")


class SecureRedis:
    """A redis-server with a plain and a TLS port, its default user off and one ACL user limited to herd's keys."""

    def __init__(self, workdir: Path) -> None:
        self.ca, cert, key = make_certs(workdir)
        self.port, self.tls_port = free_port(), free_port()
        plain = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
        tls = ["--tls-port", str(self.tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
        tls += ["--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(["redis-server", *plain, *tls], stdout=subprocess.DEVNULL)
        wait_redis(self.port, self.proc)
        admin = redis.Redis(port=self.port)
        # Least privilege: herd's own keys (herd:*, arq:*) and channels, nothing else; then nobody else gets in.
        admin.acl_setuser(
            "admin", enabled=True, passwords=["+admin-pw"], keys=["*"], channels=["*"], commands=["+@all"]
        )
        admin.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~herd:*", "~arq:*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        admin.close()
        self.admin = redis.Redis(port=self.port, username="admin", password="admin-pw")

    def stop(self) -> None:
        self.admin.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    srv = SecureRedis(tmp_path_factory.mktemp("secure-redis"))
    yield srv
    srv.stop()


def herd(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "herd", *args],
            env={**os.environ, "HERD_LOG_FORMAT": "text", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"herd exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz?workers=1", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"herd not ready:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def complete_once(port: int) -> str:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120, max_retries=0) as api:
        raw = api.completions.with_raw_response.create(model="smollm2:135m", prompt="Hello", max_tokens=8)
        assert raw.status_code == 200
        assert raw.parse().choices[0].text is not None
        return raw.headers["x-request-id"]


def test_serve_over_tls_as_an_acl_user(secure: SecureRedis, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = herd(
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        log,
        HERD_REDIS_URL=f"rediss://127.0.0.1:{secure.tls_port}/2",
        HERD_REDIS_TLS_CA_FILE=str(secure.ca),
        HERD_REDIS_USERNAME=USER,
        HERD_REDIS_PASSWORD=PASSWORD,
    )
    try:
        wait_ready(proc, port, log)
        rid = complete_once(port)
        # The request went through this Redis (db 2), written by the worker as the ACL user.
        secure.admin.execute_command("SELECT", "2")
        assert secure.admin.exists(f"herd:stats:{rid}") == 1
        clients = secure.admin.execute_command("CLIENT", "LIST").decode()
        assert f"user={USER}" in clients
        assert "private redis-server" not in log.read_text()
    finally:
        stop(proc)


@pytest.mark.parametrize("command", [["api", "--port", "0"], ["worker"]])
def test_wrong_password_stops_the_start_with_a_clear_error(
    secure: SecureRedis, tmp_path: Path, command: list[str]
) -> None:
    log = tmp_path / "out.log"
    proc = herd(
        command,
        log,
        HERD_REDIS_URL=f"redis://127.0.0.1:{secure.port}/0",
        HERD_REDIS_USERNAME=USER,
        HERD_REDIS_PASSWORD="not-the-password",
    )
    assert proc.wait(timeout=60) != 0
    out = log.read_text()
    assert f"herd {command[0]}: Redis at redis://127.0.0.1:{secure.port}/0 refused user '{USER}'" in out
    assert "Traceback" not in out
    assert "not-the-password" not in out  # secrets stay out of logs


def test_tls_without_the_ca_is_refused_at_once(secure: SecureRedis) -> None:
    settings = Settings(redis_url=f"rediss://127.0.0.1:{secure.tls_port}/0", redis_password=PASSWORD)
    with pytest.raises(redisconn.RedisSettingsError, match="TLS to Redis"):
        redisconn.check(settings, wait_s=5)


def test_connection_options_from_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    opts = redisconn.connection_options(
        Settings(redis_url="rediss://u:p%40ss@redis.internal:6380/4", redis_tls_ca_file=str(ca))
    )
    assert (opts["host"], opts["port"], opts["db"], opts["username"], opts["password"]) == (
        "redis.internal",
        6380,
        4,
        "u",
        "p@ss",
    )
    assert (opts["ssl"], opts["ssl_ca_certs"], opts["ssl_cert_reqs"]) == (True, str(ca), "required")
    # The dedicated settings win over the URL (the password comes from a Kubernetes secret).
    opts = redisconn.connection_options(
        Settings(redis_url="redis://u:old@h/1", redis_username="svc", redis_password="new")
    )
    assert (opts["username"], opts["password"], "ssl" in opts) == ("svc", "new", False)
    for bad, message in (
        (Settings(redis_url="http://h"), "must start with"),
        (Settings(redis_url="redis://h/x"), "must be a number"),
        (Settings(redis_tls_ca_file=str(tmp_path / "missing.pem"), redis_tls=True), "not a readable file"),
        (Settings(redis_tls_ca_file=str(ca)), "TLS is off"),
    ):
        with pytest.raises(redisconn.RedisSettingsError, match=message):
            redisconn.connection_options(bad)
    with pytest.raises(redisconn.RedisSettingsError, match="HOST:PORT"):
        redisconn.sync_client(Settings(redis_sentinels="h1:26379,nonsense", redis_sentinel_service="m"))
    with pytest.raises(redisconn.RedisSettingsError, match="SENTINEL_SERVICE"):
        redisconn.sync_client(Settings(redis_sentinels="h1:26379"))


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """A private master and a redis-server running as a Sentinel that monitors it as `herdmaster`."""
    workdir = tmp_path_factory.mktemp("sentinel")
    master_port, sentinel_port = free_port(), free_port()
    master = subprocess.Popen(
        ["redis-server", "--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    conf = workdir / "sentinel.conf"  # a sentinel rewrites its config file, so it gets its own
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {workdir}\nsentinel monitor herdmaster 127.0.0.1 {master_port} 1\n"
    )
    sent = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        wait_redis(master_port, master)
        wait_redis(sentinel_port, sent)
        yield master_port, sentinel_port
    finally:
        for proc in (sent, master):
            proc.terminate()
            proc.wait(timeout=10)


def test_serve_finds_its_redis_through_a_sentinel(sentinel: tuple[int, int], tmp_path: Path) -> None:
    master_port, sentinel_port = sentinel
    port = free_port()
    log = tmp_path / "serve.log"
    proc = herd(
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        log,
        # The URL's host and port lead nowhere: only the sentinel knows where the master is.
        HERD_REDIS_URL="redis://127.0.0.1:1/3",
        HERD_REDIS_SENTINELS=f"127.0.0.1:{sentinel_port}",
        HERD_REDIS_SENTINEL_SERVICE="herdmaster",
    )
    try:
        wait_ready(proc, port, log)
        rid = complete_once(port)
        master = redis.Redis(port=master_port, db=3)
        raw = master.get(f"herd:stats:{rid}")
        master.close()
        assert raw is not None and msgspec.json.decode(raw)["request_id"] == rid
        assert "private redis-server" not in log.read_text()
    finally:
        stop(proc)


def test_the_pool_closes_connections_left_idle(redis_port: int) -> None:
    """A burst opens a connection per command in flight; the pool hands those back to Redis once they have been idle
    for HERD_REDIS_IDLE_S (redis-py alone keeps them all for good). Counted by Redis itself (CLIENT LIST)."""
    name = f"herd-trim-{os.getpid()}"
    settings = Settings(redis_url=f"redis://127.0.0.1:{redis_port}/3", redis_idle_s=0.3)
    observer = redis.Redis(port=redis_port)

    def connected() -> int:
        return sum(1 for c in observer.client_list() if c.get("name") == name)

    async def scenario() -> tuple[int, int, int]:
        client = redisconn.async_client(settings, client_name=name)
        try:
            await asyncio.gather(*(client.blpop([f"herd-trim-{i}"], timeout=0.2) for i in range(12)))
            burst = connected()
            await client.ping()  # used again at once: nothing is idle for long yet
            kept = connected()
            await asyncio.sleep(0.5)
            await client.ping()  # the first release after the idle time closes the idle ones
            for _ in range(50):  # Redis sees the closes a moment later
                if connected() == 1:
                    break
                await asyncio.sleep(0.05)
            return burst, kept, connected()
        finally:
            await client.aclose()

    burst, kept, after = asyncio.run(scenario())
    observer.close()
    assert burst == 12 and kept == 12
    assert after == 1
