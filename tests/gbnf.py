"""llama.cpp's own GBNF parser as a check on the grammars herd compiles (the `vocab` fixture is in conftest.py)."""

from __future__ import annotations

from typing import Any

import llama_cpp as L


def parses(vocab: Any, gbnf: str) -> bool:
    """Whether llama.cpp accepts `gbnf` with its rule `root` as the start."""
    sampler = L.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        return False
    L.llama_sampler_free(sampler)
    return True
