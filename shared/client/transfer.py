"""`herd pull` and `herd create -f Modelfile`: the server's /api/pull and /api/create with progress, and the blob
uploads a Modelfile's `FROM ./file.gguf` needs (the server never reads a client's paths)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from herd.api.models import modelfile
from herd.api.models.pull import url_name
from herd.client.http import Client, ClientError
from herd.client.progress import Reporter
from herd.errors import ServiceError

_CHUNK = 1 << 20


def pull(client: Client, model: str) -> None:
    with Reporter() as report, client.lines("/api/pull", {"model": model, "stream": True}) as lines:
        for item in lines:
            report.line(item)


def local_name(model: str) -> str:
    """The name a pull of `model` is stored under: the name itself, or for a URL the server's own rule."""
    if not model.startswith(("https://", "http://")):
        return model
    try:
        return url_name(model)
    except ServiceError as exc:
        raise ClientError(exc.message) from exc


def _digest(path: Path, report: Reporter) -> str:
    total, done, sha = path.stat().st_size, 0, hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            done += len(chunk)
            report.bar(f"hash {path}", "gathering model components", total, done)
    return f"sha256:{sha.hexdigest()}"


def _chunks(path: Path, report: Reporter, key: str, label: str) -> Iterator[bytes]:
    total, done = path.stat().st_size, 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            done += len(chunk)
            report.bar(key, label, total, done)
            yield chunk


def upload_blob(client: Client, path: Path, report: Reporter) -> str:
    """The file's digest, after uploading it unless the server has it already."""
    digest = _digest(path, report)
    if client.status("HEAD", f"/api/blobs/{digest}") != 200:
        label = f"copying file {digest.removeprefix('sha256:')[:12]}"
        client.upload(f"/api/blobs/{digest}", _chunks(path, report, digest, label))
    return digest


def _is_path(value: str, base: Path) -> Path | None:
    if value.startswith("@") or value.startswith("sha256"):
        return None
    candidate = (base / os.path.expanduser(value)).resolve()
    if candidate.is_file():
        return candidate
    if value.startswith(("/", ".", "~")) or value.lower().endswith(".gguf"):
        raise ClientError(f"no such file: {value} (FROM in the Modelfile)")
    return None


def create(client: Client, name: str, file: Path, quantize: str | None) -> None:
    try:
        text = file.read_text()
    except OSError as exc:
        raise ClientError(f"reading the Modelfile: {exc.strerror}: {file}") from None
    with Reporter() as report:
        lines = []
        for line in text.splitlines():
            op, _, value = line.strip().partition(" ")
            path = _is_path(value.strip(), file.parent) if op.upper() == "FROM" else None
            lines.append(f"FROM @{upload_blob(client, path, report)}" if path else line)
        try:
            parsed = modelfile.parse("\n".join(lines))
        except ServiceError as exc:
            raise ClientError(exc.message) from None
        body: dict[str, object] = {"model": name, "stream": True}
        if parsed.from_:
            body["from"] = parsed.from_
        if parsed.files:
            body["files"] = parsed.files
        for field in ("template", "system", "license"):
            if getattr(parsed, field) is not None:
                body[field] = getattr(parsed, field)
        if parsed.parameters:
            body["parameters"] = parsed.parameters
        if quantize:
            body["quantize"] = quantize
        with client.lines("/api/create", body) as progress:
            for item in progress:
                report.line(item)
