"""Model management on the store: blob uploads, create, copy, delete. Blocking store calls run in a thread.

Nothing a client sends is opened as a path: `files` maps labels to digests, and a digest becomes a path only
through ModelStore.blob_path after api/models/names.py accepted it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from herd.api.models import modelfile
from herd.api.models.names import canonical_name, parse_digest
from herd.api.models.quantize import quantize, source_type, target_type
from herd.api.models.sandbox import check_gguf
from herd.api.models.store import Manifest, ModelStore, sha256_file
from herd.api.wire import ollama as wire
from herd.errors import InvalidRequest, ModelNotFound

_PARAMETERS = frozenset(f.name for f in msgspec.structs.fields(wire.Options))


async def receive_blob(store: ModelStore, digest: str, chunks: AsyncIterator[bytes], cap: int) -> bool:
    """Stream an upload into the temp area while hashing it; rename it into blobs/ only if the sha256 matches.

    Returns False when the blob was already there (the body is not read, as Ollama does).
    """
    expected = parse_digest(digest)
    if await asyncio.to_thread(store.has_blob, digest):
        return False
    temp = await asyncio.to_thread(store.temp_file, "upload-")
    try:
        hasher, size = hashlib.sha256(), 0
        with temp.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    raise InvalidRequest(f"blob is larger than the {cap}-byte limit (HERD_BLOB_MAX_BYTES)")
                hasher.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        if hasher.hexdigest() != expected:
            raise InvalidRequest(f"digest mismatch: the body's sha256 is sha256:{hasher.hexdigest()}", param="digest")
        await asyncio.to_thread(store.commit_blob, temp, digest)
    finally:
        temp.unlink(missing_ok=True)  # gone already when committed
    return True


def _parameters(given: dict[str, Any] | None) -> dict[str, Any]:
    """Ollama's parameter names with values of the right type (a Modelfile's PARAMETER lines)."""
    given = given or {}
    unknown = sorted(set(given) - _PARAMETERS)
    if unknown:
        raise InvalidRequest(f"unknown parameter {unknown[0]!r}", param="parameters")
    try:
        msgspec.convert(given, wire.Options)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid parameters: {exc}", param="parameters") from None
    return dict(given)


def _refuse_unsupported(body: wire.CreateRequest) -> None:
    if body.adapters:
        raise InvalidRequest("adapters (LoRA) are unsupported", param="adapters")
    if body.messages:
        raise InvalidRequest("messages are unsupported in create", param="messages")


def _check_gguf(store: ModelStore, digest: str) -> None:
    if not store.has_blob(digest):
        raise InvalidRequest(f"blob {digest} not found; upload it first with POST /api/blobs/{digest}", param="files")
    check_gguf(store.blob_path(digest), f"blob {digest}")


def _quantized(store: ModelStore, source: Path, wanted: str, statuses: list[wire.ProgressResponse]) -> str:
    """The digest of `source` quantized to `wanted`, a new blob (as Ollama: its status lines, then the layer)."""
    name, ftype = target_type(wanted)
    kind = source_type(source)
    statuses.append(wire.ProgressResponse(status=f"quantizing {kind} model to {name}"))
    temp = store.temp_file("quantize-")
    try:
        quantize(source, temp, ftype)
        digest = sha256_file(temp)
        if not store.has_blob(digest):
            store.commit_blob(temp, digest)
    finally:
        temp.unlink(missing_ok=True)
    statuses.append(wire.ProgressResponse(status=f"creating new layer {digest}"))
    return digest


def create(store: ModelStore, body: wire.CreateRequest) -> list[wire.ProgressResponse]:
    """Write the manifest for `body` and return the status lines of the steps taken (blocking; run in a thread)."""
    name = canonical_name(body.model or body.name)
    body = modelfile.merged(body)
    _refuse_unsupported(body)
    base = None
    if body.from_:
        base = store.get(body.from_)
        if base is None:
            raise ModelNotFound(f"base model '{body.from_[:100]}' not found", param="from")
    statuses = [wire.ProgressResponse(status="parsing GGUF")] if body.files else []
    model, draft = (base.model, base.draft) if base else (None, None)
    external = (base.external, base.external_version) if base else (None, None)
    from_files = False
    for label, digest in sorted((body.files or {}).items()):
        parse_digest(digest, param="files")
        if not label.lower().endswith(".gguf"):
            raise InvalidRequest(
                f"unsupported file {label[:100]!r}: herd creates models from GGUF files", param="files"
            )
        _check_gguf(store, digest)
        statuses.append(wire.ProgressResponse(status=f"using existing layer {digest}"))
        if label.lower().startswith("draft"):  # a second GGUF named draft*.gguf: the speculative draft model
            draft = digest
        elif from_files:
            raise InvalidRequest("files names more than one model GGUF", param="files")
        else:
            model, external, from_files = digest, (None, None), True
    if model is None:
        raise InvalidRequest("create needs `from` (an existing model) or `files` (an uploaded GGUF)", param="files")
    if body.quantize:
        source = Path(external[0]) if external[0] else store.blob_path(model)
        model = _quantized(store, source, body.quantize, statuses)
        external, from_files = (None, None), True
    parameters = {**(base.parameters if base else {}), **_parameters(body.parameters)}
    size = base.size if base and not from_files else store.blob_path(model).stat().st_size
    manifest = Manifest(
        name=name,
        model=model,
        size=size,
        modified_at=time.time(),
        template=body.template if body.template is not None else (base.template if base else ""),
        system=body.system if body.system is not None else (base.system if base else ""),
        parameters=parameters,
        draft=draft,
        external=external[0],
        external_version=external[1],
        source=f"create from {base.name}" if base else "create",
    )
    statuses.append(wire.ProgressResponse(status="writing manifest"))
    store.put(manifest)
    statuses.append(wire.ProgressResponse(status="success"))
    return statuses
