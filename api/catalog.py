"""What the API can tell about a configured model without a worker: its GGUF header and file stats, read once."""

from __future__ import annotations

import asyncio
import logging
import os

import msgspec

from shared.config import Settings
from shared.gguf import GGUFError, GGUFInfo, read_info

log = logging.getLogger("herd.api.catalog")


class ModelFile(msgspec.Struct, frozen=True):
    size: int
    modified_at: float  # seconds since the epoch
    info: GGUFInfo


class Catalog:
    """GGUF facts by model name, cached per file version (path, mtime, size): a header parse costs ~50 ms."""

    def __init__(self, settings: Settings) -> None:
        self._paths = {m.name: m.path for m in settings.models}
        self._cache: dict[str, tuple[tuple[int, int], ModelFile]] = {}

    async def describe(self, name: str, verbose: bool = False) -> ModelFile | None:
        """None when this API process has no readable GGUF for `name` (its file may live only on a worker's host).

        `verbose` also reads the long arrays (the vocabulary), which are left out otherwise and never cached.
        """
        path = self._paths.get(name)
        if path is None:
            return None
        return await asyncio.to_thread(self._read, path, verbose)

    def _read(self, path: str, verbose: bool) -> ModelFile | None:
        try:
            stat = os.stat(path)
            version = (stat.st_mtime_ns, stat.st_size)
            cached = self._cache.get(path)
            if cached is not None and cached[0] == version and not verbose:
                return cached[1]
            found = ModelFile(size=stat.st_size, modified_at=stat.st_mtime, info=read_info(path, arrays=verbose))
        except (OSError, GGUFError) as exc:
            log.debug("no model facts from %s: %s", path, exc)
            return None
        if not verbose:
            self._cache[path] = (version, found)
        return found
