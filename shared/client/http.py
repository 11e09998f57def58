"""The CLI's connection to a running herd: where it is (HERD_HOST), its key (HERD_API_KEY), and one-line errors.

A failure of any client command is a `ClientError` whose message is the one line printed after `Error: `, and the
command exits 1, as Ollama's do. The exception tree:

    ClientError
    ├── NotRunning      nothing answers at HERD_HOST
    └── Refused         the server answered with an error status (or an in-band error line)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
import msgspec

DEFAULT_PORT = 8080


class ClientError(Exception):
    """One line for the user; the command exits 1."""


class NotRunning(ClientError):
    pass


class Refused(ClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def base_url(env: Mapping[str, str] | None = None) -> str:
    """HERD_HOST as Ollama reads OLLAMA_HOST: `[scheme://]host[:port]`; the port defaults to HERD_PORT, then 8080.

    HERD_HOST is also where `herd serve` binds, so a wildcard bind address means this machine's loopback.
    """
    env = os.environ if env is None else env
    raw = env.get("HERD_HOST", "").strip() or "127.0.0.1"
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    rest = rest.rstrip("/")
    host, port = rest, ""
    if rest.startswith("["):
        host, _, tail = rest.partition("]")
        host += "]"
        port = tail.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    elif rest.count(":") > 1:
        host = f"[{rest}]"  # a bare IPv6 address
    if host in ("0.0.0.0", "", "[::]"):
        host = "127.0.0.1"
    port = port or env.get("HERD_PORT", "") or str(DEFAULT_PORT)
    return f"{scheme}://{host}:{port}"


def _error_message(response: httpx.Response) -> str:
    """The server's own message: Ollama's {"error": "..."} or OpenAI's {"error": {"message": ...}}."""
    try:
        body = msgspec.json.decode(response.read())
    except (msgspec.DecodeError, httpx.HTTPError):
        return f"the server answered {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else f"the server answered {response.status_code}"


def _refused(response: httpx.Response) -> Refused:
    message = _error_message(response)
    if response.status_code == 401:
        message = f"{message} (set HERD_API_KEY to an API key of this herd)"
    elif response.status_code == 403 and "scope" not in message:
        message = f"{message} (HERD_API_KEY lacks the permission)"
    return Refused(response.status_code, message)


class Client:
    """A blocking httpx client for one herd, which turns transport and status failures into ClientErrors."""

    def __init__(self, env: Mapping[str, str] | None = None, timeout: float | None = None) -> None:
        env = os.environ if env is None else env
        self.url = base_url(env)
        headers = {"user-agent": "herd-cli"}
        key = env.get("HERD_API_KEY", "")
        if key:
            headers["authorization"] = f"Bearer {key}"
        # No read timeout by default: a model may load, or think, for minutes between two lines.
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=5.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answers(self) -> bool:
        """Whether a herd (or anything speaking Ollama's /api/version) answers at HERD_HOST."""
        try:
            return self._http.get("/api/version", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise NotRunning(f"could not connect to herd at {self.url}, is it running? (herd serve)") from exc
        except httpx.TimeoutException as exc:
            raise ClientError(f"herd at {self.url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"talking to herd at {self.url}: {exc}") from exc

    def request(self, method: str, path: str, body: Any = None, content: bytes | None = None) -> Any:
        """One JSON exchange; the decoded body (None when empty)."""
        with self._mapped():
            payload = content if content is not None else (None if body is None else msgspec.json.encode(body))
            response = self._http.request(method, path, content=payload)
            if response.status_code >= 400:
                raise _refused(response)
            return msgspec.json.decode(response.content) if response.content else None

    def status(self, method: str, path: str) -> int:
        with self._mapped():
            return self._http.request(method, path).status_code

    def upload(self, path: str, chunks: Iterator[bytes]) -> None:
        with self._mapped():
            response = self._http.post(path, content=chunks)
            if response.status_code >= 400:
                raise _refused(response)

    @contextmanager
    def lines(self, path: str, body: Any) -> Iterator[Iterator[dict[str, Any]]]:
        """POST `body` and read NDJSON lines; leaving the block closes the connection (the server cancels)."""
        with self._mapped(), self._http.stream("POST", path, content=msgspec.json.encode(body)) as response:
            if response.status_code >= 400:
                raise _refused(response)
            yield _decoded(response)


def _decoded(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if not line.strip():
            continue
        item = msgspec.json.decode(line)
        if isinstance(item, dict) and "error" in item:
            raise Refused(200, str(item["error"]))  # in-band: the stream had started
        yield item
