"""KV slots (llama.cpp sequence ids) and the prompt cache they hold: a finished sequence leaves its cells in place,
so the next prompt that starts the same way (a shared system prompt, the next turn of a chat) prefills only the rest.
"""

from __future__ import annotations


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Slots:
    """Free slots, each with the tokens its KV cells still hold; the least recently used cache is evicted first."""

    def __init__(self, n: int, chunk: int) -> None:
        self._chunk = chunk
        self._free: dict[int, list[int]] = {i: [] for i in range(n)}
        self._released_at: dict[int, int] = dict.fromkeys(range(n), 0)
        self._clock = 0

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def cached(self) -> int:
        """Tokens whose KV cells free slots keep for the next prompt (the heartbeat's KV-cache use)."""
        return sum(len(held) for held in self._free.values())

    def take(self, prompt: list[int]) -> tuple[int, int, int]:
        """A slot for `prompt`: (slot, prompt tokens already in it, tokens it holds in all).

        The reused prefix ends on a prefill-chunk boundary (so the rest is computed exactly as in a cold run), and
        leaves at least the prompt's last token to compute, since its logits give the first new token.
        """
        best, best_len = -1, 0
        for slot, held in self._free.items():
            common = _common_prefix(held, prompt)
            if common > best_len:
                best, best_len = slot, common
        if best < 0:
            # No reuse: an empty slot if there is one (lowest id: llama.cpp batches consecutive ids together),
            # else the one whose cache was used longest ago.
            best = min(self._free, key=lambda s: (bool(self._free[s]), self._released_at[s] if self._free[s] else s))
        held = self._free.pop(best)
        reused = min(best_len, len(prompt) - 1) // self._chunk * self._chunk
        return best, reused, len(held)

    def give_back(self, slot: int, held: list[int]) -> None:
        self._clock += 1
        self._free[slot] = held
        self._released_at[slot] = self._clock
