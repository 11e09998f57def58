"""KV slots (llama.cpp sequence ids) and the prompt cache they hold: a finished sequence leaves its cells in place,
so the next prompt that starts the same way (a shared system prompt, the next turn of a chat) prefills only the rest.

Reuse is exact: llama.cpp's arithmetic depends on how tokens are grouped into decode calls, so a prompt is always
prefilled in the same chunks, and those chunks are a function of the prompt's own tokens (`chunk_ends`): a cut
before every message of a chat (its opening control token), then every `chunk` tokens within a message. Two prompts
that share a system prompt share its chunks, so a warm run reuses exactly the cells a cold run computes, whatever
the system prompt's length; a cached prefix is only ever reused up to a cut that both prompts' chunkings have.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def message_opener(prompt: list[int], is_control: Callable[[int], bool]) -> int:
    """The token that opens each message of a rendered chat (ChatML's <|im_start|>, Llama 3's <|start_header_id|>):
    the prompt's first control token followed by text (so a BOS before the first message is not taken for it, nor
    is it missed where BOS is the opener itself); -1 when there is none (a plain completion prompt)."""
    for token, after in itertools.pairwise(prompt):
        if is_control(token) and not is_control(after):
            return token
    return -1


def chunk_ends(prompt: list[int], opener: int, chunk: int) -> list[int]:
    """Where `prompt`'s prefill chunks end: before every `opener` token, and every `chunk` tokens within a message;
    the last end is len(prompt). Chunk k depends only on the tokens up to its end and the token after it."""
    ends: list[int] = []
    start = 0
    for i in range(1, len(prompt)):
        if prompt[i] == opener or i - start == chunk:
            ends.append(i)
            start = i
    ends.append(len(prompt))
    return ends


class Slots:
    """Free slots, each with the tokens its KV cells still hold and where that prompt's chunks ended; the least
    recently used cache is evicted first."""

    def __init__(self, n: int) -> None:
        self._free: dict[int, tuple[list[int], frozenset[int]]] = {i: ([], frozenset()) for i in range(n)}
        self._released_at: dict[int, int] = dict.fromkeys(range(n), 0)
        self._clock = 0

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def cached(self) -> int:
        """Tokens whose KV cells free slots keep for the next prompt (the heartbeat's KV-cache use)."""
        return sum(len(held) for held, _ in self._free.values())

    def take(self, prompt: list[int], ends: list[int]) -> tuple[int, int, int]:
        """The slot holding the longest reusable prefix of `prompt`: (slot, prompt tokens reused, tokens it holds).

        The reused prefix ends on a cut of both prompts' chunkings (so the rest is computed exactly as in a cold
        run), and leaves at least the prompt's last token to compute, since its logits give the first new token.
        """
        best, best_len = -1, 0
        for slot, (held, cuts) in self._free.items():
            reused = _reusable(held, cuts, prompt, ends)
            if reused > best_len:
                best, best_len = slot, reused
        if best < 0:
            # No reuse: an empty slot if there is one (lowest id: llama.cpp batches consecutive ids together),
            # else the one whose cache was used longest ago.
            best = min(
                self._free, key=lambda s: (bool(self._free[s][0]), self._released_at[s] if self._free[s][0] else s)
            )
        held, _ = self._free.pop(best)
        return best, best_len, len(held)

    def give_back(self, slot: int, held: list[int], ends: list[int]) -> None:
        """Return `slot`, whose cells hold `held`: a prompt chunked at `ends` (then, maybe, tokens generated)."""
        self._clock += 1
        self._free[slot] = (held, frozenset(end for end in ends if end <= len(held)))
        self._released_at[slot] = self._clock


def _reusable(held: list[int], cuts: frozenset[int], prompt: list[int], ends: list[int]) -> int:
    if not cuts:
        return 0
    limit = min(_common_prefix(held, prompt), len(prompt) - 1)
    for end in reversed(ends):
        if end <= limit and end in cuts:
            return end
    return 0
