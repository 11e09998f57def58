"""`/api/pull`: resolve a source, download its GGUF into the store's temp area, verify, then list it atomically.

Sources (no Ollama registry exists for herd):
  hf.co/{owner}/{repo}[:{quant}]   the hub at HERD_HF_ENDPOINT: `GET /api/models/{owner}/{repo}?blobs=true` lists the
                                   repo's files with their sizes and LFS sha256; the quant tag picks the GGUF whose
                                   name carries it; `GET /{owner}/{repo}/resolve/main/{file}` serves it (redirects ok)
  https://…/name.gguf              only under a prefix listed in HERD_PULL_ALLOW

Every connection (redirects included) goes to an address checked at connect time: public only, unless
HERD_PULL_ALLOW_PRIVATE is set. A partial download stays in tmp/ under a name derived from the source and is
resumed with a Range request; the store's start-up removes partial files older than a day.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import certifi
import httpcore
import httpx
import msgspec
from herd.api.models.names import canonical_name, parse_digest, split_tag
from herd.api.models.sandbox import check_gguf
from herd.api.models.store import Manifest, ModelStore, sha256_file
from herd.api.wire.ollama import ProgressResponse
from herd.config import Settings
from herd.errors import ErrorKind, InvalidRequest, ModelNotFound, ServiceError

log = logging.getLogger("herd.api.pull")

HF_PREFIX = "hf.co/"
_MAX_REDIRECTS = 5
_PROGRESS_EVERY_S = 0.06  # Ollama reports about every 60 ms
_LISTING_MAX_BYTES = 8 * 1024 * 1024


class PullError(ServiceError):
    """The source misbehaved (no answer, a bad listing, a wrong digest): 502, or an in-band error line."""

    kind = ErrorKind.STREAM_BROKEN


class Source(msgspec.Struct, frozen=True):
    name: str  # the canonical model name it is stored under
    url: str  # the file to download
    filename: str
    sha256: str | None = None  # hex, when the source publishes it (the hub's LFS oid)
    size: int | None = None


class _LFS(msgspec.Struct):
    sha256: str = ""
    size: int = 0


class _Sibling(msgspec.Struct):
    rfilename: str
    size: int | None = None
    lfs: _LFS | None = None


class _RepoInfo(msgspec.Struct):
    siblings: list[_Sibling] = []


def public_addresses(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses `host` resolves to; InvalidRequest if any is loopback, link-local, private or reserved."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise PullError(f"cannot resolve {host!r}: {exc.strerror or exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses if not allow_private else ():
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise InvalidRequest(f"pulling from {host!r} is not allowed: it is not a public address", param="model")
    return addresses


class _PublicOnly(httpcore.AsyncNetworkBackend):
    """Resolves each host itself and connects to the very address it checked, so a DNS answer that changes between
    a check and the connect (rebinding) cannot reach a private address; TLS still verifies the host name."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await asyncio.to_thread(public_addresses, host, port, self._allow_private)
        return await self._inner.connect_tcp(addresses[0], port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise InvalidRequest("pull sources are http(s) URLs")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that connects only through _PublicOnly."""

    def __init__(self, allow_private: bool) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(cafile=certifi.where()),
            network_backend=_PublicOnly(allow_private),
        )


def pull_client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=_GuardedTransport(settings.pull_allow_private),
        timeout=httpx.Timeout(30.0, read=60.0),
        follow_redirects=False,  # followed by hand in _get, each hop's scheme checked
        trust_env=False,  # no proxy from the environment: the address check must see the real destination
    )


def url_name(url: str) -> str:
    """`https://host/dir/SmolLM2-135M.Q4_1.gguf` -> `smollm2-135m.q4_1:latest` (a valid name or InvalidRequest)."""
    stem = Path(urlsplit(url).path).name.removesuffix(".gguf").lower()
    return canonical_name(re.sub(r"[^a-z0-9_.-]", "-", stem).lstrip(".-") or "model")


def resolve_name(model: str, settings: Settings) -> tuple[str, str]:
    """(canonical local name, kind) for a pull request, checked before anything is fetched."""
    if model.startswith(("https://", "http://")):
        allowed = [p.strip() for p in settings.pull_allow.split(",") if p.strip()]
        if not any(model.startswith(prefix) for prefix in allowed):
            raise InvalidRequest("this URL is not under any prefix in HERD_PULL_ALLOW", param="model")
        if not urlsplit(model).path.endswith(".gguf") or ".." in model or "%" in model:
            raise InvalidRequest("a pull URL names one .gguf file", param="model")
        return url_name(model), "url"
    name = canonical_name(model)
    base, _ = split_tag(name)
    if not name.startswith(HF_PREFIX) or base.count("/") != 2:
        raise InvalidRequest(
            f"cannot pull {model[:100]!r}: herd pulls hf.co/{{owner}}/{{repo}}[:{{quant}}] names and https URLs "
            "allowed by HERD_PULL_ALLOW",
            param="model",
        )
    if not settings.hf_endpoint:
        raise InvalidRequest("hf.co pulls are off: set HERD_HF_ENDPOINT to the hub's base URL", param="model")
    return name, "hf"


def pick_file(siblings: list[_Sibling], quant: str) -> _Sibling | None:
    """The GGUF whose name carries `quant` (case-insensitive); for `latest`, Q4_K_M when present, else the only one."""
    ggufs = [s for s in siblings if s.rfilename.lower().endswith(".gguf") and "/" not in s.rfilename]
    ggufs = [s for s in ggufs if not s.rfilename.lower().startswith("mmproj")]  # vision projectors are not models
    if quant.lower() == "latest":
        preferred = [s for s in ggufs if "q4_k_m" in s.rfilename.lower()]
        candidates = preferred or (ggufs if len(ggufs) == 1 else [])
    else:
        token = re.compile(rf"(?:^|[-._]){re.escape(quant.lower())}\.gguf$")
        candidates = [s for s in ggufs if token.search(s.rfilename.lower())]
    return min(candidates, key=lambda s: len(s.rfilename)) if candidates else None


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """GET with redirects followed by hand (each hop's address is checked when it connects); caller closes it."""
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PullError(f"the source redirected to something that is not an http(s) URL: {url[:200]}")
        response = await client.send(client.build_request("GET", url, headers=headers), stream=True)
        if response.is_redirect and "location" in response.headers:
            await response.aclose()
            url = urljoin(url, response.headers["location"])
            continue
        return response
    raise PullError("too many redirects")


async def resolve(client: httpx.AsyncClient, model: str, settings: Settings) -> Source:
    name, kind = resolve_name(model, settings)
    if kind == "url":
        return Source(name=name, url=model, filename=Path(urlsplit(model).path).name)
    base, quant = split_tag(name)
    repo = base.removeprefix(HF_PREFIX)
    endpoint = settings.hf_endpoint.rstrip("/")
    response = await _get(client, f"{endpoint}/api/models/{quote(repo)}?blobs=true", {})
    try:
        if response.status_code in (401, 403, 404):
            raise ModelNotFound(f"pull model manifest: {repo} not found on the hub", param="model")
        if response.status_code != 200:
            raise PullError(f"the hub answered {response.status_code} for {repo}")
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > _LISTING_MAX_BYTES:
                raise PullError("the hub's file listing is too large")
    finally:
        await response.aclose()
    try:
        info = msgspec.json.decode(body, type=_RepoInfo)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PullError(f"the hub's file listing for {repo} is not valid: {exc}") from exc
    found = pick_file(info.siblings, quant)
    if found is None:
        raise ModelNotFound(f"pull model manifest: no GGUF file for tag '{quant}' in {repo}", param="model")
    sha = found.lfs.sha256 if found.lfs and re.fullmatch(r"[0-9a-f]{64}", found.lfs.sha256) else None
    size = found.lfs.size if found.lfs and found.lfs.size else found.size
    url = f"{endpoint}/{quote(repo)}/resolve/main/{quote(found.rfilename)}"
    return Source(name=name, url=url, filename=found.rfilename, sha256=sha, size=size)


class Puller:
    """One pull, as an async iterator of Ollama progress objects; raises ServiceError on failure."""

    def __init__(self, store: ModelStore, settings: Settings, model: str) -> None:
        self._store = store
        self._settings = settings
        self._model = model

    async def run(self) -> AsyncIterator[ProgressResponse]:
        yield ProgressResponse(status="pulling manifest")
        try:
            async for item in self._pull():
                yield item
        except httpx.HTTPError as exc:
            raise PullError(f"pull failed: {exc}") from exc
        except OSError as exc:
            raise PullError(f"pull failed: {exc.strerror or exc}") from exc

    async def _pull(self) -> AsyncIterator[ProgressResponse]:
        async with pull_client(self._settings) as client:
            source = await resolve(client, self._model, self._settings)
            cap = self._settings.blob_max_bytes
            if source.size is not None and source.size > cap:
                raise InvalidRequest(f"{source.filename} is {source.size} bytes, over the {cap}-byte limit")
            key = hashlib.sha256(f"{source.url}\n{source.sha256}".encode()).hexdigest()
            partial = self._store.tmp / f"pull-{key[:32]}.partial"
            label = (source.sha256 or key)[:12]
            digest = f"sha256:{source.sha256}" if source.sha256 else ""
            if source.sha256 and self._store.has_blob(digest):
                yield ProgressResponse(status=f"pulling {label}", digest=digest, total=source.size or 0,
                                       completed=source.size or 0)  # fmt: skip
            else:
                async for progress in self._download(client, source, partial, label):
                    yield progress
                yield ProgressResponse(status="verifying sha256 digest")
                digest = await asyncio.to_thread(self._verify, partial, source)
        yield ProgressResponse(status="writing manifest")
        await asyncio.to_thread(self._write_manifest, source, digest)
        yield ProgressResponse(status="success")

    async def _download(
        self, client: httpx.AsyncClient, source: Source, partial: Path, label: str
    ) -> AsyncIterator[ProgressResponse]:
        with partial.open("a+b") as out:
            try:  # one pull per file at a time, across API processes too
                fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InvalidRequest(f"{source.filename} is being pulled already", param="model") from None
            have = out.seek(0, os.SEEK_END)
            response = await _get(client, source.url, {"Range": f"bytes={have}-"} if have else {})
            try:
                if response.status_code == 416 and have and have == source.size:
                    return  # the partial file is already whole; verification decides
                if response.status_code == 416:
                    out.truncate(0)  # longer than the file is now: the next pull starts over
                    raise PullError(f"downloading {source.filename}: the source changed; pull again")
                if response.status_code not in (200, 206):
                    raise PullError(f"downloading {source.filename}: the server answered {response.status_code}")
                if response.status_code == 200:
                    have = 0  # no Range support (or a changed file): start over
                    out.truncate(0)
                length = int(response.headers.get("content-length", "0") or 0)
                total = source.size or (have + length if length else 0)
                cap = self._settings.blob_max_bytes
                if total > cap:
                    raise InvalidRequest(f"{source.filename} is {total} bytes, over the {cap}-byte limit")
                digest = f"sha256:{source.sha256}" if source.sha256 else ""
                completed, last = have, 0.0
                async for chunk in response.aiter_bytes(1 << 20):
                    completed += len(chunk)
                    if completed > cap:
                        raise InvalidRequest(f"{source.filename} is over the {cap}-byte limit")
                    await asyncio.to_thread(out.write, chunk)  # "a" mode: every write appends
                    now = time.monotonic()
                    if now - last >= _PROGRESS_EVERY_S:
                        last = now
                        yield ProgressResponse(
                            status=f"pulling {label}", digest=digest, total=total, completed=completed
                        )
                final = ProgressResponse(
                    status=f"pulling {label}", digest=digest, total=total or completed, completed=completed
                )
                yield final
            finally:
                await response.aclose()

    def _verify(self, partial: Path, source: Source) -> str:
        """sha256 of the whole file, checked against the source's when it published one; then into blobs/."""
        digest = sha256_file(partial)
        if source.sha256 and parse_digest(digest) != source.sha256:
            partial.unlink(missing_ok=True)  # a resume would only repeat the mismatch
            raise PullError(f"digest mismatch for {source.filename}: expected sha256:{source.sha256}, got {digest}")
        try:
            check_gguf(partial, source.filename)
        except InvalidRequest:
            partial.unlink(missing_ok=True)
            raise
        self._store.commit_blob(partial, digest)
        return digest

    def _write_manifest(self, source: Source, digest: str) -> None:
        size = self._store.blob_path(digest).stat().st_size
        source_text = f"pull {self._model}"
        self._store.put(
            Manifest(name=source.name, model=digest, size=size, modified_at=time.time(), source=source_text)
        )
