"""What the API can tell about a model without a worker: its GGUF header and file stats, read once per version."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import msgspec
from herd.api.models.gguf import GGUFError, GGUFInfo, read_info

log = logging.getLogger("herd.api.catalog")


class ModelFile(msgspec.Struct, frozen=True):
    size: int
    modified_at: float  # seconds since the epoch
    info: GGUFInfo


class Catalog:
    """GGUF facts by model name, cached per file version (path, mtime, size): a header parse costs ~50 ms.

    `locate` maps a model name to its GGUF on this host (a configured path or a store blob), or None.
    """

    def __init__(self, locate: Callable[[str], str | None]) -> None:
        self._locate = locate
        self._cache: dict[str, tuple[tuple[int, int], ModelFile]] = {}

    async def describe(self, name: str, verbose: bool = False) -> ModelFile | None:
        """None when this API process has no readable GGUF for `name` (its file may live only on a worker's host).

        `verbose` also reads the long arrays (the vocabulary), which are left out otherwise and never cached.
        """
        return await asyncio.to_thread(self._read, name, verbose)

    def _read(self, name: str, verbose: bool) -> ModelFile | None:
        try:
            path = self._locate(name)
            if path is None:
                return None
            stat = os.stat(path)
            version = (stat.st_mtime_ns, stat.st_size)
            cached = self._cache.get(path)
            if cached is not None and cached[0] == version and not verbose:
                return cached[1]
            found = ModelFile(size=stat.st_size, modified_at=stat.st_mtime, info=read_info(path, arrays=verbose))
        except (OSError, GGUFError) as exc:
            log.debug("no model facts for %s: %s", name, exc)
            return None
        if not verbose:
            self._cache[path] = (version, found)
        return found
