"""Embedding requests in the engine thread: tokenize, group the inputs into micro-batches, pool, assemble."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from herd.errors import ContextLengthExceeded, InvalidRequest
from herd.inference import Embedded, EmbeddingRequest
from herd.workers.protocol import EngineLike


@dataclass(slots=True)
class EmbedJob:
    req: EmbeddingRequest
    done: asyncio.Future[None]
    tokens: list[list[int]] = field(default_factory=list)
    rows: list[npt.NDArray[np.float32]] = field(default_factory=list)
    started: bool = False

    def prepare(self, engine: EngineLike) -> None:
        """Tokenize and check every input; raises the ServiceError the client should get."""
        for i, item in enumerate(self.req.inputs):
            param = f"input[{i}]" if len(self.req.inputs) > 1 else "input"
            if isinstance(item, str):
                tokens = engine.tokenize(item, add_special=True) if item else []
            else:
                tokens = list(item)
                if any(t < 0 or t >= engine.n_vocab for t in tokens):
                    raise InvalidRequest(f"token ids must be in [0, {engine.n_vocab})", param=param)
            if not tokens:
                raise InvalidRequest("an input is empty", param=param)
            if len(tokens) > engine.n_ctx_seq:
                if not self.req.truncate:
                    raise ContextLengthExceeded(
                        f"This model's maximum context length is {engine.n_ctx_seq} tokens, however an input "
                        f"has {len(tokens)} tokens. Please reduce the length of the input.",
                        param=param,
                    )
                tokens = tokens[: engine.n_ctx_seq]
            self.tokens.append(tokens)
        if self.req.dimensions is not None and self.req.dimensions > engine.n_embd:
            raise InvalidRequest(f"dimensions must be at most {engine.n_embd} for this model", param="dimensions")
        self.started = True

    def step(self, engine: EngineLike) -> bool:
        """Embed the next group of inputs that fits one micro-batch; True when every input is done."""
        start = len(self.rows)
        end, budget = start, engine.n_ctx_seq
        while end < len(self.tokens) and end - start < engine.max_seqs and len(self.tokens[end]) <= budget:
            budget -= len(self.tokens[end])
            end += 1
        self.rows.extend(engine.embed(self.tokens[start:end]))
        return len(self.rows) == len(self.tokens)

    def result(self, seq: int) -> Embedded:
        vectors = np.stack(self.rows)
        if self.req.dimensions is not None:
            # Keep the leading dimensions and renormalise (what OpenAI's `dimensions` does for its models).
            vectors = vectors[:, : self.req.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embedded(
            seq=seq,
            vectors=vectors.astype("<f4").tobytes(),
            dimensions=int(vectors.shape[1]),
            prompt_tokens=sum(len(t) for t in self.tokens),
        )
