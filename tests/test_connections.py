"""HTTP hygiene against a real `herd serve`: header size (431), head deadline (408 and close: silent and slowloris
sockets), a stalled body and a body dribbled below the minimum rate (408), idle keep-alive close, a cap on connections
(503), early 413 from Content-Length, Origin and Host checks."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from herd.api.edge.origins import Doorman
from herd.config import load_settings

from tests.conftest import MODEL, HerdServer
from tests.test_redis_restart import PrivateRedis

MAX_CONNECTIONS = 24
LIMITS = {
    "HERD_HTTP_HEADER_TIMEOUT_S": "2",
    "HERD_HTTP_BODY_MIN_RATE": "1000",
    "HERD_HTTP_IDLE_TIMEOUT_S": "1",
    "HERD_HTTP_MAX_HEADER_BYTES": "8192",
    "HERD_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "HERD_MAX_BODY_BYTES": "65536",
    "HERD_ORIGINS": "https://app.example,https://*.corp.example",
    "HERD_ALLOWED_HOSTS": "herd.lan",
}
CHAT = b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    redis_server = PrivateRedis(tmp_path_factory.mktemp("redis-conn"))
    redis_server.start()
    server = HerdServer(redis_server.port, db=0, log_path=tmp_path_factory.mktemp("conn") / "serve.log", **LIMITS)
    yield server
    server.stop()
    redis_server.kill()


def connect(herd: HerdServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", herd.port), timeout=30)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the 30 s socket timeout fails the test)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass  # closed with our unread bytes in its buffer: the kernel resets instead of a clean close
    return b"".join(chunks)


def test_a_large_header_is_431(herd: HerdServer) -> None:
    answer = httpx.get(f"{herd.base_url}/v1/models", headers={"x-big": "a" * 20_000}, timeout=30)
    assert answer.status_code == 431


def test_a_megabyte_of_header_is_cut_off(herd: HerdServer) -> None:
    with connect(herd) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(64):
                sock.sendall(b"a" * 16384)  # 1 MiB, never finished
        except OSError:
            pass  # the server closed while we were still sending: that is the point
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 431") or reply == b""


def test_a_silent_socket_is_closed(herd: HerdServer) -> None:
    with connect(herd) as sock:
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_a_slowloris_socket_is_closed(herd: HerdServer) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: a\r\n" * 1000
    with connect(herd) as sock:
        sock.settimeout(0.5)
        sent, reply = 0, b""
        for byte in head:  # one byte every half second: the head would take 20 minutes
            try:
                sock.sendall(bytes([byte]))
                sent += 1
                reply = sock.recv(65536)
                break  # an answer (or EOF) came
            except TimeoutError:
                continue
            except OSError:
                break
    assert reply.startswith(b"HTTP/1.1 408") or reply == b""
    assert sent < len(head)


def test_a_stalled_body_is_closed(herd: HerdServer) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with connect(herd) as sock:
        sock.sendall(head + b'{"model":')  # then nothing more: the app waits for a body that never comes
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def chat_head(length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


def test_a_body_dribbled_below_the_minimum_rate_is_408(herd: HerdServer) -> None:
    """100 bytes every half second (200 B/s, never a 2 s gap, so the stall rule alone would wait for ever) against a
    minimum of 1000 B/s after a 2 s grace: refused long before the 60 kB body is through."""
    body = CHAT + b" " * (60_000 - len(CHAT))  # under HERD_MAX_BODY_BYTES
    with connect(herd) as sock:
        sock.sendall(chat_head(len(body)))
        sock.settimeout(0.5)
        sent, reply = 0, b""
        while sent < len(body):
            try:
                sock.sendall(body[sent : sent + 100])
                sent += 100
                reply = sock.recv(65536)
                break  # an answer (or EOF) came
            except TimeoutError:
                continue
            except OSError:
                break
        sock.settimeout(30)
        if not reply:
            reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert sent < len(body)


def test_a_slow_body_above_the_minimum_rate_is_served(herd: HerdServer) -> None:
    """1000 bytes every tenth of a second (about ten times the minimum) for 3 s, past the 2 s grace: served."""
    body = CHAT + b" " * (30_000 - len(CHAT))
    with connect(herd) as sock:
        sock.sendall(chat_head(len(body)))
        for start in range(0, len(body), 1000):
            sock.sendall(body[start : start + 1000])
            time.sleep(0.1)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_an_idle_keep_alive_connection_is_closed(herd: HerdServer) -> None:
    with connect(herd) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = read_until_closed(sock)  # the response, then the close once idle
    assert reply.startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_cap_get_503(herd: HerdServer) -> None:
    socks = [connect(herd) for _ in range(MAX_CONNECTIONS + 8)]
    try:
        replies = [read_until_closed(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    refused = [r for r in replies if r.startswith(b"HTTP/1.1 503")]
    assert len(refused) >= 8
    assert all(r.startswith((b"HTTP/1.1 503", b"HTTP/1.1 408")) for r in replies)
    assert httpx.get(f"{herd.base_url}/healthz", timeout=30).status_code == 200  # and the server still serves


def test_a_body_over_the_limit_is_413_before_it_is_sent(herd: HerdServer) -> None:
    with connect(herd) as sock:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        sock.sendall(head + b"{" * 1024)  # 1 KiB of the announced 100 MB
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_a_foreign_origin_is_403_whatever_the_content_type(herd: HerdServer) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json"):
        headers = {"origin": "https://evil.example", "content-type": content_type}
        answer = httpx.post(f"{herd.base_url}/v1/chat/completions", content=CHAT, headers=headers, timeout=30)
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "origin_not_allowed"
        ollama = httpx.post(f"{herd.base_url}/api/chat", content=CHAT, headers=headers, timeout=30)
        assert ollama.status_code == 403 and set(ollama.json()) == {"error"}
    null = httpx.post(f"{herd.base_url}/api/generate", content=CHAT, headers={"origin": "null"}, timeout=30)
    assert null.status_code == 403


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1", "https://app.example", None])
def test_allowed_origins_and_curl_d_go_through(herd: HerdServer, origin: str | None) -> None:
    # curl -d sends application/x-www-form-urlencoded, as Ollama's own docs do it: no Origin, so it works.
    headers = {"content-type": "application/x-www-form-urlencoded", **({"origin": origin} if origin else {})}
    answer = httpx.post(f"{herd.base_url}/v1/chat/completions", content=CHAT, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "chat.completion"


def test_origin_wildcards() -> None:
    door = Doorman(load_settings({"HERD_ORIGINS": "https://*.corp.example"}), auth_on=False)
    assert door.origin_allowed("https://chat.corp.example")
    assert not door.origin_allowed("https://corp.example.evil")
    assert not door.origin_allowed("http://chat.corp.example")
    assert door.origin_allowed("http://[::1]:8080") and not door.origin_allowed("http://0.0.0.0:80")


@pytest.mark.parametrize(
    ("host", "status"),
    [("evil.example", 403), ("evil.example:8080", 403), ("localhost", 200), ("herd.lan", 200), ("10.1.2.3", 200)],
)
def test_host_names_are_checked_with_auth_off(herd: HerdServer, host: str, status: int) -> None:
    answer = httpx.get(f"{herd.base_url}/v1/models", headers={"host": host}, timeout=30)
    assert answer.status_code == status, answer.text


def test_with_auth_on_any_host_name_is_accepted() -> None:
    door = Doorman(load_settings({}), auth_on=True)
    assert door.host_allowed("evil.example")
    assert not Doorman(load_settings({}), auth_on=False).host_allowed("evil.example")
    assert Doorman(load_settings({}), auth_on=False).host_allowed("[::1]:8080")


def test_normal_traffic_on_one_connection_is_unaffected(herd: HerdServer) -> None:
    with httpx.Client(base_url=herd.base_url, timeout=60) as client:
        for _ in range(3):
            assert client.get("/v1/models").status_code == 200
            time.sleep(0.2)
