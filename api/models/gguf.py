"""GGUF header reader in pure Python: metadata and parameter count without loading llama.cpp (the API never does)."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import msgspec

_MAGIC = b"GGUF"
LONG_ARRAY = 1024  # Ollama's limit for arrays it decodes when not verbose
_STRING, _ARRAY = 8, 9
# Value type -> struct format of one scalar (GGUF is little-endian).
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}

# llama.cpp's `llama_ftype` (general.file_type), named as Ollama names quantization levels.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}


class GGUFError(ValueError):
    """The file is not a GGUF this reader understands (or is truncated)."""


class GGUFInfo(msgspec.Struct, frozen=True):
    version: int
    metadata: dict[str, Any]  # arrays over LONG_ARRAY items (vocabulary, merges) are [] unless read with arrays=True
    parameter_count: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        return FILE_TYPES.get(file_type, "unknown") if isinstance(file_type, int) else "unknown"


class _Reader:
    def __init__(self, data: mmap.mmap, keep_arrays: bool) -> None:
        self._data = data
        self._pos = 0
        self._keep_arrays = keep_arrays

    def scalar(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self._data, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        if self._pos + n > len(self._data):
            raise GGUFError("string runs past the end of the file")
        text = self._data[self._pos : self._pos + n].decode("utf-8", "replace")
        self._pos += n
        return text

    def skip_string(self) -> None:
        n = self.scalar("<Q")
        self._pos += n

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array()
        fmt = _SCALARS.get(kind)
        if fmt is None:
            raise GGUFError(f"unknown metadata value type {kind}")
        return self.scalar(fmt)

    def array(self) -> list[Any]:
        kind, count = self.scalar("<I"), self.scalar("<Q")
        # Ollama's /api/show shows long arrays only when asked (verbose): skip those unread, it is 3x faster.
        if count > LONG_ARRAY and not self._keep_arrays:
            if kind == _STRING:
                for _ in range(count):
                    self.skip_string()
            elif kind in _SCALARS:
                self._pos += count * struct.calcsize(_SCALARS[kind])
            else:
                for _ in range(count):
                    self.value(kind)
            if self._pos > len(self._data):
                raise GGUFError("array runs past the end of the file")
            return []
        return [self.value(kind) for _ in range(count)]


def read_info(path: str | Path, arrays: bool = False) -> GGUFInfo:
    """Metadata key/values and the total parameter count from a GGUF file's header (tensor data is never read)."""
    with Path(path).open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != _MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        reader = _Reader(data, arrays)
        reader.scalar("<4s")
        try:
            version = reader.scalar("<I")
            if version not in (2, 3):
                raise GGUFError(f"GGUF version {version} is not supported")
            n_tensors, n_kv = reader.scalar("<Q"), reader.scalar("<Q")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = reader.string()
                metadata[key] = reader.value(reader.scalar("<I"))
            parameters = 0
            for _ in range(n_tensors):
                reader.skip_string()
                n_dims = reader.scalar("<I")
                count = 1
                for _ in range(n_dims):
                    count *= reader.scalar("<Q")
                reader.scalar("<I")  # tensor type
                reader.scalar("<Q")  # data offset
                parameters += count
        except struct.error as exc:
            raise GGUFError(f"{path} is truncated: {exc}") from exc
    return GGUFInfo(version=version, metadata=metadata, parameter_count=parameters)


def human_number(n: int) -> str:
    """Parameter counts as Ollama prints them (its `format.HumanNumber`): 135M, 134.52M, 8.0B."""
    if n >= 10**9:
        value = n / 10**9
        return f"{value:.0f}B" if value.is_integer() else f"{value:.1f}B"
    if n >= 10**6:
        value = n / 10**6
        return f"{value:.0f}M" if value.is_integer() else f"{value:.2f}M"
    if n >= 10**3:
        return f"{n / 10**3:.0f}K"
    return str(n)
