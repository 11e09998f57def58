"""The scheduler's state per sequence (one choice of a request) and per request, and the worker's running counts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from herd.inference import GenerationRequest, TokenLogprob
from herd.workers.protocol import Sampler
from herd.workers.speculate import Acceptance
from herd.workers.textstream import TextStream


@dataclass(slots=True)
class Family:
    """What the choices of one request share: its event numbering and the future that ends when all are done."""

    done: asyncio.Future[None]
    event_seq: int = 0
    live: int = 1  # choices not yet finished (the forks join when the prompt is prefilled)
    fork_slots: list[int] = field(default_factory=list)  # reserved at admission for choices 1..n-1
    reasoning: str | None = None  # how the choices' reasoning comes in their text (herd.reasoning.start)


@dataclass(slots=True)
class Seq:
    req: GenerationRequest
    family: Family
    index: int = 0  # the choice
    seq_id: int = -1
    prompt: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # where its prefill chunks end (workers/slots.py)
    n_prefilled: int = 0
    kv_len: int = 0  # tokens of prompt + out whose KV cells are in the slot
    kinds: bytearray = field(default_factory=bytearray)  # the kernel each of those cells took (workers/slots.py)
    cached: int = 0  # prompt tokens found in the slot's cache at admission
    out: list[int] = field(default_factory=list)
    max_tokens: int = 0
    sampler: Sampler | None = None
    text: TextStream | None = None
    next_token: int = -1  # sampled, not yet in the KV cache
    generated: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent
    admitted_ns: int = 0
    admitted_wall_ns: int = 0
    first_token_ns: int = 0
    acceptance: Acceptance | None = None  # its drafts' recent acceptance; None: this sequence does not speculate
    drafted: int = 0
    accepted: int = 0
    first_sent: bool = False  # the choice's first delta went out (it names the tool and reasoning formats)

    def next_seq(self) -> int:
        self.family.event_seq += 1
        return self.family.event_seq - 1


@dataclass(slots=True)
class Counters:
    tokens_generated: int = 0
    requests_done: int = 0
    requests_cancelled: int = 0
    tokens_drafted: int = 0
    tokens_accepted: int = 0


def by_seq_id(seq: Seq) -> int:
    return seq.seq_id
