"""KV slots (llama.cpp sequence ids) and the prompt cache they hold: a finished sequence leaves its cells in place, so
the next prompt that starts the same way (a shared system prompt, the next turn of a chat) prefills only the rest.

Reuse is exact: llama.cpp's arithmetic depends on how tokens are grouped into decode calls, so a prompt is always
prefilled in the same chunks, and those chunks are a function of the prompt's own tokens (`chunk_ends`): a cut after
the header of every message of a chat but the first (ChatML's ``<|im_start|>user\n``), so that what two prompts share
(a system prompt and the next message's header; a whole earlier turn up to its reply) ends on a cut, a cut before a
header that follows a long chunk, then every `chunk` tokens within a message. A cached prefix is reused only up to a
cut where both prompts' chunkings agree on every cut before it, so a warm run reuses exactly the cells a cold run
computes, whatever the system prompt's length.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from herd.workers.protocol import EngineLike


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


def prompt_chunks(prompt: list[int], engine: EngineLike, chunk: int) -> list[int]:
    """`chunk_ends` for a prompt of `engine`'s vocabulary: its messages' opener, and a header closed by a newline or
    a control token."""

    def closes_header(token: int) -> bool:
        return engine.is_control(token) or engine.piece(token).endswith(b"\n")

    return chunk_ends(prompt, message_opener(prompt, engine.is_control), chunk, closes_header)


FOLD = 32  # a chunk shorter than this takes the next message's header along; a longer one ends before it


def chunk_ends(
    prompt: list[int], opener: int, chunk: int, closes_header: Callable[[int], bool], fold: int = FOLD
) -> list[int]:
    """Where `prompt`'s prefill chunks end: after the header of every message but the first (its `opener` and the
    tokens up to the first that `closes_header`: a newline, or a control token such as Llama 3's <|end_header_id|>),
    and before the header too when the chunk it would join is `fold` tokens or longer, or when the header never
    closes before the next opener; and every `chunk` tokens within a message. The last end is len(prompt). Each cut
    depends only on the tokens before it and on the header after it.

    A header goes with the message before it, not with its own content, because that is what prompts share: two
    prompts with one system prompt share the next message's header too (nearly always a user turn), and the
    generation prompt a request ends with (ChatML's <|im_start|>assistant\n) is where the next turn of the same chat
    has a cut as well. So a short chat that shares a cached system prompt computes its own message and the generation
    prompt in one decode call, and the next turn reuses the whole of this one's prompt. After a long chunk (a
    document) the header is a chunk of its own: the same prompt sent again then recomputes only that header."""
    first = prompt.index(opener) if opener in prompt else -1  # the first message's header needs no cut
    ends: list[int] = []
    start = 0
    after_header = -1
    for i in range(1, len(prompt)):
        cut = i == after_header or i - start == chunk
        if prompt[i] == opener and i != first:
            close = _header_close(prompt, i, opener, closes_header)
            if close < 0 or i - start >= fold:
                cut = True
            if close >= 0:
                after_header = close + 1
        if cut:
            ends.append(i)
            start = i
    ends.append(len(prompt))
    return ends


def _header_close(prompt: list[int], at: int, opener: int, closes_header: Callable[[int], bool]) -> int:
    """The index of the token that ends the header of the message opened at `at`, or -1 when none does before the
    next opener or the prompt's end."""
    for j in range(at + 1, len(prompt)):
        if prompt[j] == opener:
            return -1
        if closes_header(prompt[j]):
            return j
    return -1


class Slots:
    """Free slots, each with the tokens its KV cells still hold and where that prompt's chunks ended; the least
    recently used cache is evicted first."""

    def __init__(self, n: int) -> None:
        self._free: dict[int, tuple[list[int], list[int]]] = {i: ([], []) for i in range(n)}
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

        The reused prefix ends on a cut of both prompts' chunkings, which agree on every cut before it (so the
        reused cells are those a cold run computes, and the rest is computed exactly as in a cold run), and leaves at
        least the prompt's last token to compute, since its logits give the first new token.
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
        self._free[slot] = (held, [end for end in ends if end <= len(held)])
        self._released_at[slot] = self._clock


def _reusable(held: list[int], cuts: list[int], prompt: list[int], ends: list[int]) -> int:
    """The last cut of the chunkings' common beginning within the tokens `held` and `prompt` share (not the last)."""
    limit = min(_common_prefix(held, prompt), len(prompt) - 1)
    reused = 0
    for mine, theirs in zip(ends, cuts, strict=False):
        if mine != theirs or mine > limit:
            break
        reused = mine
    return reused
