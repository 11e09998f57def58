"""Speculative decoding: per sequence a proposer drafts up to k tokens, the batcher verifies every sequence's draft in
its one decode step, keeps the longest prefix the model agrees with, and trims the rejected KV cells.

Only greedy sequences draft (temperature 0, no grammar, no logprobs): for them "the model agrees" means the argmax
at each drafted position equals the drafted token, so the accepted tokens are exactly what one-token steps would
pick from the same logits. Sampled sequences decode one token per step as without speculation.
"""

from __future__ import annotations

import msgspec

from shared.config import ModelConfig
from shared.errors import EngineError
from workers.engine import Engine, Sampler

MAX_NGRAM = 3
MIN_NGRAM = 2  # a single-token match drafts mostly noise: each rejected token still costs a decode slot


def prompt_lookup(context: list[int], k: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the context's last n tokens (longest n first)."""
    end = len(context)
    for n in range(min(MAX_NGRAM, end - 1), MIN_NGRAM - 1, -1):
        pattern = context[end - n :]
        first = pattern[0]
        for start in range(end - n - 1, -1, -1):
            if context[start] == first and context[start : start + n] == pattern:
                follow = context[start + n : start + n + k]
                if follow:
                    return follow
    return []


def adapt(k: int, drafted: int, accepted: int, k_max: int) -> int:
    """Draft more after a fully accepted draft, less after a rejection (never below 1)."""
    if drafted == 0:
        return k
    return min(k_max, k + 2) if accepted == drafted else max(1, k - 1)


class Speculator:
    """Proposes drafts for a model (prompt lookup, or a draft model in its own context with the same sequence ids)."""

    def __init__(self, model: ModelConfig, target: Engine, n_threads: int) -> None:
        self.k_max = max(1, model.spec_k)
        self._draft: Engine | None = None
        self._held: dict[int, int] = {}  # seq id -> tokens of that sequence whose KV cells the draft model holds
        if model.speculate == "draft":
            cfg = msgspec.structs.replace(
                model, name=f"{model.name} (draft)", path=model.draft_path, n_ctx=target.n_ctx_seq
            )
            self._draft = Engine(cfg, target.max_seqs, target.n_batch, n_threads)
            if self._draft.n_vocab != target.n_vocab:
                self._draft.close()
                raise EngineError(f"the draft model of '{model.name}' has another vocabulary than the model")
        self._greedy = Sampler(None)

    def reset(self, seq_id: int) -> None:
        """A sequence starts in this slot: the draft model's cells there belong to an earlier one."""
        if self._draft is not None:
            self._draft.drop(seq_id)
            self._held[seq_id] = 0

    def propose(self, items: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """Drafts for (seq id, prompt + output so far, k) items; the context's last token is not yet verified."""
        if self._draft is None:
            return [prompt_lookup(context, k) for _, context, k in items]
        draft, drafts = self._draft, [list[int]() for _ in items]
        # Catch up: everything the draft model has not seen, all but the last token in chunks of their own.
        for seq_id, context, _ in items:
            held = self._held.get(seq_id, 0)
            while held < len(context) - 1:
                end = min(len(context) - 1, held + draft.n_batch)
                n = end - held
                draft.decode(context[held:end], range(held, end), [seq_id] * n, [False] * n)
                held = end
            self._held[seq_id] = held
        # Then one decode per drafted position, every drafting sequence together.
        feed = [(i, context[-1], len(context) - 1) for i, (_, context, _) in enumerate(items)]
        for step in range(max((k for _, _, k in items), default=0)):
            feed = [(i, tok, pos) for i, tok, pos in feed if items[i][2] > step]
            if not feed:
                break
            draft.decode(
                [t for _, t, _ in feed], [p for _, _, p in feed], [items[i][0] for i, _, _ in feed], [True] * len(feed)
            )
            for index, (i, _, pos) in enumerate(feed):
                token = draft.sample(self._greedy, index)
                drafts[i].append(token)
                self._held[items[i][0]] = pos + 1
                feed[index] = (i, token, pos + 1)
        return drafts

    def verified(self, seq_id: int, context_len: int, accepted: int) -> None:
        """The model accepted `accepted` drafted tokens after a context of `context_len`: forget the draft's rest."""
        if self._draft is not None:
            keep = min(self._held.get(seq_id, 0), context_len + accepted)
            self._draft.trim(seq_id, keep)
            self._held[seq_id] = keep

    def close(self) -> None:
        if self._draft is not None:
            self._draft.close()
