"""What the batcher and the embedder need of an engine: `EngineLike`, which workers/engine.py's `Engine` satisfies.

The batcher depends on this surface, not on llama.cpp, so its scheduling can be tested against a scripted engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from herd.inference import Grammar, SamplingParams, TokenLogprob


class Sampler:
    """A sampler owned by one sequence: an engine's opaque handle (None: plain greedy), its grammar and, for a greedy
    one, the logit bias it adds before the argmax (an engine's own form), if any."""

    __slots__ = ("bias", "grammar", "handle")

    def __init__(self, handle: object | None, grammar: object | None = None, bias: object | None = None) -> None:
        self.handle = handle  # None: argmax over the logits
        self.grammar = grammar  # kept out of the chain: checked against the token drawn first (see Engine.sample)
        self.bias = bias


class EngineLike(Protocol):
    """One model and its context of `max_seqs` KV sequences, driven by one thread. Positions and batch indexes are
    those of the last decode(): sample() and logprobs() read the logits it left at a batch index."""

    @property
    def n_vocab(self) -> int: ...
    @property
    def n_ctx_seq(self) -> int: ...  # context length of one sequence
    @property
    def n_batch(self) -> int: ...  # most tokens one decode() takes
    @property
    def max_seqs(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def add_bos(self) -> bool: ...
    @property
    def bos_id(self) -> int: ...  # -1: the vocabulary has none
    @property
    def chat_template(self) -> str | None: ...
    @property
    def bos_text(self) -> str: ...
    @property
    def eos_text(self) -> str: ...

    def tokenize(self, text: str, add_special: bool) -> list[int]: ...
    def piece(self, token: int, special: bool = False) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def is_control(self, token: int) -> bool: ...  # a template's special token (BOS, <|im_start|>, ...)
    def infill_tokens(self) -> tuple[int, int, int] | None: ...

    def new_sampler(self, params: SamplingParams, grammar: Grammar | None = None, seed_offset: int = 0) -> Sampler: ...
    def sample(self, sampler: Sampler, batch_index: int) -> int: ...
    def free_sampler(self, sampler: Sampler) -> None: ...
    def logprobs(self, batch_index: int, token: int, top: int) -> TokenLogprob: ...

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int], logits: Sequence[bool]
    ) -> None: ...
    def fork(self, source: int, target: int) -> None: ...
    def drop(self, seq_id: int) -> None: ...
    def trim(self, seq_id: int, keep: int) -> None: ...

    def embed(self, inputs: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]: ...
