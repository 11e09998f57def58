"""api/models/gguf.py as a unit: the GGUF header reader and the parameter-count names."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from herd.api.models.gguf import GGUFError, human_number, read_info


def write_gguf(path: Path, kv: list[tuple[str, int, bytes]], tensors: list[tuple[str, list[int]]]) -> None:
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    data = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, kind, value in kv:
        data += string(key) + struct.pack("<I", kind) + value
    for name, dims in tensors:
        data += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        data += struct.pack("<IQ", 0, 0)
    path.write_bytes(data)


def test_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    tokens = struct.pack("<IQ", 8, 2000) + b"".join(struct.pack("<Q", 1) + b"t" for _ in range(2000))
    write_gguf(
        path,
        [
            ("general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
            ("general.file_type", 4, struct.pack("<I", 15)),
            ("general.languages", 9, struct.pack("<IQ", 8, 1) + struct.pack("<Q", 2) + b"en"),
            ("tokenizer.ggml.tokens", 9, tokens),
            ("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
        ],
        [("a", [10, 20]), ("b", [5])],
    )
    info = read_info(path)
    assert (info.architecture, info.quantization, info.parameter_count) == ("llama", "Q4_K_M", 205)
    assert info.metadata["general.languages"] == ["en"] and info.metadata["tokenizer.ggml.tokens"] == []
    assert info.metadata["llama.rope.freq_base"] == 10000.0
    assert len(read_info(path, arrays=True).metadata["tokenizer.ggml.tokens"]) == 2000
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(GGUFError):
        read_info(path)


def test_human_number() -> None:
    assert [human_number(n) for n in (134_515_008, 135_000_000, 8_030_000_000, 7_000_000_000, 1500)] == [
        "134.52M",
        "135M",
        "8.0B",
        "7B",
        "2K",
    ]
