"""The one place Redis clients are built from Settings: URL, ACL user/password, TLS files and Sentinel.

The API (api/app.py), the workers (workers/jobs.py, handed to arq as its pool) and `herd serve`'s supervisor all
connect through here, so a managed Redis (TLS + ACL user) or a Sentinel-watched one works the same for every part.

With HERD_REDIS_SENTINELS set, the URL's host and port are not used (the sentinels name the master); its scheme
(rediss: TLS), database, user and password still are.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.exceptions
import redis.sentinel
from arq.connections import ArqRedis
from herd.config import Settings
from herd.errors import Unavailable
from redis.asyncio.connection import AbstractConnection

# Errors no retry can fix: the operator has to change a setting.
_FATAL = (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError, ssl.SSLError)

# Errors a retry can fix: Redis is unreachable, restarting or slow. The one definition of them.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

UNREACHABLE = "the API cannot reach Redis; try again shortly"


class map_redis_errors:
    """Redis I/O inside this block that fails for a transient reason raises Unavailable (a 503 to the client).

    Usable as `with` around awaits and as `async with` beside an async context manager (a pipeline)."""

    def __init__(self, message: str = UNREACHABLE) -> None:
        self._message = message

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, REDIS_ERRORS):
            raise Unavailable(self._message) from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, exc, tb)


class RedisSettingsError(ValueError):
    """A Redis setting that cannot work (bad URL, missing TLS file, refused credentials)."""


def _sentinels(settings: Settings) -> list[tuple[str, int]]:
    found = []
    for item in filter(None, (part.strip() for part in settings.redis_sentinels.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RedisSettingsError(f"HERD_REDIS_SENTINELS entry {item!r} is not HOST:PORT")
        found.append((host.strip("[]"), int(port)))
    return found


def connection_options(settings: Settings) -> dict[str, Any]:
    """redis-py connection keyword arguments (host/port included unless Sentinel decides them)."""
    url = urlparse(settings.redis_url)
    if url.scheme not in ("redis", "rediss", "unix"):
        raise RedisSettingsError(f"HERD_REDIS_URL must start with redis://, rediss:// or unix:// (got {url.scheme!r})")
    options: dict[str, Any] = {}
    query_db = parse_qs(url.query).get("db")
    if url.scheme == "unix":
        options["unix_socket_path"] = url.path
        db = query_db[0] if query_db else "0"
    else:
        options.update(host=url.hostname or "127.0.0.1", port=url.port or 6379)
        db = query_db[0] if query_db else (url.path.lstrip("/") or "0")
    if not db.isdigit():
        raise RedisSettingsError(f"the database in HERD_REDIS_URL must be a number (got {db!r})")
    options["db"] = int(db)
    # The dedicated settings win over the URL, so the password can come from a secret without being in the URL.
    username = settings.redis_username or (unquote(url.username) if url.username else None)
    password = settings.redis_password or (unquote(url.password) if url.password else None)
    options.update(username=username or None, password=password or None)
    tls = url.scheme == "rediss" or settings.redis_tls
    for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise RedisSettingsError(f"HERD_{name.upper()} {path!r} is not a readable file")
    if tls:
        options.update(
            ssl=True,
            ssl_ca_certs=settings.redis_tls_ca_file or None,
            ssl_certfile=settings.redis_tls_cert_file or None,
            ssl_keyfile=settings.redis_tls_key_file or None,
            ssl_cert_reqs="required" if settings.redis_tls_verify else "none",
            ssl_check_hostname=settings.redis_tls_verify,
        )
    elif settings.redis_tls_ca_file or settings.redis_tls_cert_file or settings.redis_tls_key_file:
        raise RedisSettingsError("Redis TLS files are set but TLS is off: use a rediss:// URL or HERD_REDIS_TLS=1")
    return options


def _sentinel_options(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels themselves: the same TLS, their own password (sentinels often have none)."""
    extra = {k: v for k, v in options.items() if k.startswith(("ssl", "socket_"))}
    if settings.redis_sentinel_password:
        extra["password"] = settings.redis_sentinel_password
    return extra


def _service(settings: Settings) -> str:
    if not settings.redis_sentinel_service:
        raise RedisSettingsError("HERD_REDIS_SENTINELS needs HERD_REDIS_SENTINEL_SERVICE (the monitored master's name)")
    return settings.redis_sentinel_service


class _Trimmed:
    """A pool that closes the connections left idle for longer than `idle_s`. redis-py's pool keeps every connection
    it ever opened, so a process's connections to Redis (and its file descriptors) stayed at the peak of its commands
    in flight for good. The check runs as a connection comes back, on the least recently used one (the pool hands out
    the most recent first); the API's batch runner uses the pool every second, so an idle API shrinks too."""

    idle_s: float = 30.0

    async def release(self, connection: AbstractConnection) -> None:
        await super().release(connection)  # type: ignore[misc]
        now = time.monotonic()
        released = self._released()
        released[connection] = now
        available: list[AbstractConnection] = self._available_connections  # type: ignore[attr-defined]
        while len(available) > 1 and now - released.get(available[0], now) > self.idle_s:
            stale = available.pop(0)
            with contextlib.suppress(*REDIS_ERRORS):
                await stale.disconnect(nowait=True)

    def _released(self) -> weakref.WeakKeyDictionary[AbstractConnection, float]:
        """When each pooled connection last came back (created on first use: the pools' own __init__ is theirs)."""
        released: weakref.WeakKeyDictionary[AbstractConnection, float] | None = getattr(self, "_herd_released", None)
        if released is None:
            released = weakref.WeakKeyDictionary()
            self._herd_released = released
        return released


class _TrimmedPool(_Trimmed, redis.asyncio.ConnectionPool):
    pass


class _TrimmedSentinelPool(_Trimmed, redis.asyncio.sentinel.SentinelConnectionPool):
    pass


def async_client(settings: Settings, **extra: Any) -> ArqRedis:
    """An ArqRedis (enqueue_job plus all of redis.asyncio) for the API and the workers, on a pool that closes
    connections idle for longer than HERD_REDIS_IDLE_S."""
    options = {**connection_options(settings), **extra}
    sentinels = _sentinels(settings)
    if not sentinels:
        client = ArqRedis(**options)
        # The client builds its pool from the options (TLS, unix sockets...); the same pool, of the trimming kind.
        # Nothing has connected yet, so swapping it loses nothing.
        built = client.connection_pool
        pool = _TrimmedPool(
            connection_class=built.connection_class, max_connections=built.max_connections, **built.connection_kwargs
        )
        pool.idle_s = settings.redis_idle_s
        client.connection_pool = pool
        client.auto_close_connection_pool = True
        return client
    options.pop("host"), options.pop("port")
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        sentinels, sentinel_kwargs=_sentinel_options(settings, options), **options
    )
    master: ArqRedis = sentinel.master_for(
        _service(settings), redis_class=ArqRedis, connection_pool_class=_TrimmedSentinelPool
    )
    master.connection_pool.idle_s = settings.redis_idle_s  # type: ignore[attr-defined]
    return master


def sync_client(settings: Settings, **extra: Any) -> redis.Redis:
    """A blocking client (the supervisor in `herd serve`, startup checks)."""
    options = {**connection_options(settings), **extra}
    sentinels = _sentinels(settings)
    if not sentinels:
        return redis.Redis(**options)
    options.pop("host"), options.pop("port")
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        sentinels, sentinel_kwargs=_sentinel_options(settings, options), **options
    )
    master: redis.Redis = sentinel.master_for(_service(settings))  # type: ignore[no-untyped-call]
    return master


def describe(settings: Settings) -> str:
    """Where herd connects, without secrets, for log lines and errors."""
    if settings.redis_sentinels:
        return f"sentinel service {settings.redis_sentinel_service!r} via {settings.redis_sentinels}"
    url = urlparse(settings.redis_url)
    return f"{url.scheme}://{url.hostname or ''}:{url.port or 6379}{url.path}"


def check(settings: Settings, wait_s: float = 0.0) -> None:
    """PING with the configured credentials. RedisSettingsError at once for what no retry fixes (bad settings,
    refused credentials, TLS failures); an unreachable Redis is retried for `wait_s` and then left to the caller's
    own reconnects (the API answers 503 and /readyz says not ready until Redis is back)."""
    deadline = time.monotonic() + wait_s
    client = sync_client(settings, socket_connect_timeout=2, socket_timeout=5)
    try:
        while True:
            try:
                client.ping()
                return
            except _FATAL as exc:
                who = f"user {settings.redis_username!r}" if settings.redis_username else "the configured credentials"
                raise RedisSettingsError(f"Redis at {describe(settings)} refused {who}: {exc}") from exc
            except REDIS_ERRORS as exc:
                # redis-py wraps TLS handshake failures in ConnectionError: those are settings errors too.
                if isinstance(exc.__cause__ or exc.__context__, ssl.SSLError) or "SSL" in str(exc):
                    raise RedisSettingsError(f"TLS to Redis at {describe(settings)} failed: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"Redis at {describe(settings)} does not answer: {exc}") from exc
                time.sleep(0.5)
            except redis.exceptions.ResponseError as exc:
                raise RedisSettingsError(f"Redis at {describe(settings)} answered PING with an error: {exc}") from exc
    finally:
        client.close()
