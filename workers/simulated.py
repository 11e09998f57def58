"""TEST AND BENCHMARK ONLY: an EngineLike with no model, for simulated fleets (`herd worker --simulate RATE`).

It emits tokens at a fixed rate per sequence (each decode step sleeps 1/RATE seconds, and every running sequence
gets one token per step), so that hundreds of workers and thousands of streams fit on one machine and the Redis,
dispatch and streaming sides of herd can be measured without the cost of a model. The text it writes is meaningless:
never serve it to anyone. Tokens are bytes (id = byte + 2; 0 ends generation, 1 is BOS); the chat template is
herd's ChatML fallback.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from herd.inference import Grammar, SamplingParams, TokenLogprob
from herd.workers.protocol import Sampler

EOG, BOS = 0, 1
REPLY = b"simulated tokens from a worker with no model "


class SimulatedEngine:
    """Satisfies EngineLike. `tokens_per_s`: decode steps per second, so tokens per second of each sequence."""

    def __init__(self, max_seqs: int, n_ctx_seq: int, n_batch: int, tokens_per_s: float) -> None:
        if tokens_per_s <= 0:
            raise ValueError("a simulated worker needs a positive token rate")
        self.n_vocab = 258
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        self.max_seqs = max_seqs
        self.n_embd = 8
        self.add_bos = True
        self.bos_id = BOS
        self.chat_template: str | None = None
        self.bos_text = ""
        self.eos_text = ""
        self._step_s = 1.0 / tokens_per_s

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return ([BOS] if add_special else []) + [b + 2 for b in text.encode()]

    def piece(self, token: int, special: bool = False) -> bytes:
        return bytes([token - 2]) if token >= 2 else b""

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def is_control(self, token: int) -> bool:
        return token in (EOG, BOS)

    def infill_tokens(self) -> tuple[int, int, int] | None:
        return None

    def new_sampler(self, params: SamplingParams, grammar: Grammar | None = None, seed_offset: int = 0) -> Sampler:
        return Sampler([0])  # the handle: how far into REPLY this sequence is

    def sample(self, sampler: Sampler, batch_index: int) -> int:
        at = sampler.handle
        assert isinstance(at, list)
        n = int(at[0])
        at[0] = n + 1
        return REPLY[n % len(REPLY)] + 2

    def free_sampler(self, sampler: Sampler) -> None:
        pass

    def logprobs(self, batch_index: int, token: int, top: int) -> TokenLogprob:
        return TokenLogprob(self.piece(token), 0.0, ((self.piece(token), 0.0),)[:top])

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int], logits: Sequence[bool]
    ) -> None:
        time.sleep(self._step_s)

    def fork(self, source: int, target: int) -> None:
        pass

    def drop(self, seq_id: int) -> None:
        pass

    def trim(self, seq_id: int, keep: int) -> None:
        pass

    def embed(self, inputs: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        vectors = np.zeros((len(inputs), self.n_embd), dtype=np.float32)
        vectors[:, 0] = 1.0
        return vectors

    def close(self) -> None:
        pass
