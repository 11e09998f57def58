"""A scripted EngineLike (workers/protocol.py) for in-process tests of the batcher: a "model" that continues each
prompt with a scripted reply, read from the KV cells the batcher put in each sequence, so a sequence fed the wrong
positions, another sequence's cells or a stale cache answers wrongly, and every such mistake is also recorded.

Tokens: 0 is end-of-generation, 1 is BOS, any other id is the character chr(id) (ASCII only); "<" stands for a
template's control tokens (so ChatML's "<|im_start|>" opens each message, as the real token does).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from herd.errors import EngineError, InvalidRequest
from herd.inference import Grammar, SamplingParams, TokenLogprob
from herd.workers.protocol import Sampler

EOG, BOS, CONTROL = 0, 1, ord("<")
BAD_GRAMMAR = "unparseable"  # new_sampler refuses this grammar as the real Engine refuses one llama.cpp cannot parse
POISON = "\x7f"  # a decode that holds this token fails, as llama_decode can


@dataclass(frozen=True, slots=True)
class Decode:
    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    seq_ids: tuple[int, ...]
    logits: tuple[bool, ...]


class ScriptedEngine:
    """Satisfies EngineLike; `script` maps a prompt text to the reply this model gives it (no match: it stops)."""

    def __init__(self, script: dict[str, str], max_seqs: int = 4, n_ctx_seq: int = 64, n_batch: int = 8) -> None:
        self.script = script
        self.n_vocab = 128
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        self.max_seqs = max_seqs
        self.n_embd = 4
        self.add_bos = True
        self.bos_id = BOS
        self.chat_template: str | None = None  # the batcher's ChatML fallback
        self.bos_text = ""
        self.eos_text = ""
        self.cells: dict[int, list[int]] = {i: [] for i in range(max_seqs)}  # the KV cache, per sequence id
        self.decodes: list[Decode] = []
        self.forks: list[tuple[int, int]] = []
        self.mistakes: list[str] = []  # what a real context would have got wrong or crashed on
        self.live_samplers: set[object] = set()
        self.samplers_made = 0
        self._next: dict[int, int] = {}  # batch index of the last decode -> the token the model predicts there
        self._hold_at: int | None = None  # the decode() call (by count) that waits for release()
        self._open = threading.Event()
        self._held = threading.Event()

    # ---- vocabulary ----------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        if any(not 2 <= ord(c) < self.n_vocab for c in text):
            raise InvalidRequest("the prompt could not be tokenized", param="prompt")
        return [BOS] * (add_special and self.add_bos) + [ord(c) for c in text]

    def piece(self, token: int, special: bool = False) -> bytes:
        return b"" if token < 2 else chr(token).encode()

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def is_control(self, token: int) -> bool:
        return token in (EOG, BOS, CONTROL)

    def infill_tokens(self) -> tuple[int, int, int] | None:
        return None

    # ---- sampling ------------------------------------------------------------------------------------------

    def new_sampler(self, params: SamplingParams, grammar: Grammar | None = None, seed_offset: int = 0) -> Sampler:
        if grammar is not None and grammar.gbnf == BAD_GRAMMAR:
            raise InvalidRequest("llama.cpp could not parse the grammar for this request", param="response_format")
        self.samplers_made += 1
        self.live_samplers.add(self.samplers_made)
        return Sampler(self.samplers_made)

    def sample(self, sampler: Sampler, batch_index: int) -> int:
        if sampler.handle not in self.live_samplers:
            self.mistakes.append(f"sample() with a freed sampler {sampler.handle}")
        if batch_index not in self._next:
            self.mistakes.append(f"sample() at batch index {batch_index}, which has no logits")
            return EOG
        return self._next[batch_index]

    def free_sampler(self, sampler: Sampler) -> None:
        if sampler.handle not in self.live_samplers:
            self.mistakes.append(f"free_sampler() twice for {sampler.handle}")
        self.live_samplers.discard(sampler.handle)

    def logprobs(self, batch_index: int, token: int, top: int) -> TokenLogprob:
        alternatives = tuple((self.piece(t), -1.0 - i) for i, t in enumerate([token, ord("?")][:top]))
        return TokenLogprob(self.piece(token), -1.0, alternatives)

    # ---- the context -----------------------------------------------------------------------------------------

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int], logits: Sequence[bool]
    ) -> None:
        if self._hold_at is not None and len(self.decodes) >= self._hold_at:
            self._held.set()
            if not self._open.wait(timeout=60):
                raise EngineError("the test never released the fake engine")
        self.decodes.append(Decode(tuple(tokens), tuple(positions), tuple(seq_ids), tuple(logits)))
        if not 0 < len(tokens) <= self.n_batch:
            self.mistakes.append(f"decode() of {len(tokens)} tokens (n_batch {self.n_batch})")
        if POISON in "".join(map(chr, tokens)):
            raise EngineError("llama_decode failed with status -1")
        self._next = {}
        for index, (token, position, seq_id, wanted) in enumerate(zip(tokens, positions, seq_ids, logits, strict=True)):
            cells = self.cells[seq_id]
            if position != len(cells):
                self.mistakes.append(f"sequence {seq_id}: token at position {position}, cells hold {len(cells)}")
            del cells[position:]
            cells.append(token)
            if len(cells) > self.n_ctx_seq:
                self.mistakes.append(f"sequence {seq_id} holds {len(cells)} cells, more than {self.n_ctx_seq}")
            if wanted:
                self._next[index] = self.predict(cells)

    def predict(self, context: list[int]) -> int:
        """The next token after `context`: the scripted reply of the longest prompt it starts with."""
        text = "".join(chr(t) for t in context if t >= 2)
        prompts = [p for p in self.script if text.startswith(p)]
        if not prompts:
            return EOG
        prompt = max(prompts, key=len)
        said, reply = text[len(prompt) :], self.script[prompt]
        return ord(reply[len(said)]) if reply.startswith(said) and len(said) < len(reply) else EOG

    def fork(self, source: int, target: int) -> None:
        self.forks.append((source, target))
        self.cells[target] = list(self.cells[source])

    def drop(self, seq_id: int) -> None:
        self.cells[seq_id] = []

    def trim(self, seq_id: int, keep: int) -> None:
        del self.cells[seq_id][keep:]

    def embed(self, inputs: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        rows = np.array([[len(tokens), sum(tokens) % 7, 1.0, 0.0] for tokens in inputs], dtype=np.float32)
        normalised: npt.NDArray[np.float32] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return normalised

    # ---- control from the test -----------------------------------------------------------------------------

    def hold(self, after: int = 0) -> None:
        """The decode() after the next `after` ones waits (on the engine thread) until release(); held() returns
        once it waits."""
        self._held.clear()
        self._open.clear()
        self._hold_at = len(self.decodes) + after

    async def held(self) -> None:
        if not await asyncio.to_thread(self._held.wait, 60):
            raise AssertionError("the engine thread never reached a decode")

    def release(self, then: int | None = None) -> None:
        """Let the held decode() go on; with `then`, the decode() of that number (counting every call from 0) is held
        next."""
        self._hold_at = then
        if then is not None:
            self._held.clear()
        self._open.set()  # wakes the waiting decode(), which goes on even if the event is cleared again at once
        if then is not None:
            self._open.clear()
