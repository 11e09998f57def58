"""KV slots (llama.cpp sequence ids) and the prompt cache they hold: a finished sequence leaves its cells in place, so
the next prompt that starts the same way (a shared system prompt, the next turn of a chat, the same document again)
prefills only the rest.

Reuse is exact: a warm run computes what a cold run would. On the CPU, llama.cpp computes each token's row of a
decode call by itself (a token's result does not depend on the other tokens of its micro-batch), except in
attention, where the kernel depends on how many tokens of the sequence the micro-batch holds: fewer than 64 take one
kernel, 64 or more a tiled one (ggml's GGML_FA_TILE_Q), and a micro-batch of a single token of a single sequence
over 512 or more cells a third, which splits the cells between threads (llama.cpp pads the cells it reads to 256,
so a lone token past 256 cells). Each kernel gives the same row whatever it is grouped with (measured: any
chunking of a prompt, tokens one per step alone or beside another sequence, prompts packed together), but the three
differ from each other in the last bits. So every cell records its kernel (`KIND_*`), a prompt is prefilled in
chunks that are a function of its own tokens (`chunk_ends`), which fix each token's kernel in a cold run, and a
cached prefix is reused as far as the cells' kernels are those a cold run gives the new prompt: to any token of a
chunk under 64 tokens (the rest of the chunk is computed in one call, of 2 tokens or more past 256 cells) or of a
longer chunk while at least 64 of it remain. The tokens a sequence generated count too, where each took the short
chunks' kernel (beside another sequence, or alone within 256 cells). Chunks of several prompts share a call where
each keeps its kernel (`call_kinds` follows llama.cpp's split of a call into micro-batches).

This is llama.cpp's CPU backend, which the tests run on. GPU backends pick their matrix kernels by the size of the
whole micro-batch, so there a reply may differ in the last bits alone and batched, whatever the chunks.
"""

from __future__ import annotations

import bisect
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


TILE = 64  # tokens of one sequence in a micro-batch from which llama.cpp's CPU attention takes its tiled kernel
# A token alone in its micro-batch takes the split kernel once its sequence holds more than this many cells
# (llama.cpp pads the cells attention reads to 256, and splits them from 512); up to it, the short-chunk kernel.
LONE_CELLS = 256
KIND_ROW = ord("r")  # a cell computed with fewer than TILE tokens of its sequence in its micro-batch
KIND_TILED = ord("t")  # computed with TILE or more
KIND_UNSURE = ord("?")  # a lone token beyond LONE_CELLS: maybe the split kernel (never reused)
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
    prompts with one system prompt share the next message's header too (nearly always a user turn). So a short chat
    that shares a cached system prompt computes its own message and the generation prompt in one decode call. After
    a long chunk (a document) the header is a chunk of its own, short, so the same prompt sent again recomputes only
    its last 2 tokens, where a header in the document's tiled chunk would leave 64 to compute."""
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


def call_kind(n_tokens: int, cells: int) -> int:
    """The kernel of the cells one micro-batch of `n_tokens` tokens of one sequence alone computes, after which the
    sequence holds `cells` cells."""
    if n_tokens >= TILE:
        return KIND_TILED
    return KIND_ROW if n_tokens > 1 or cells <= LONE_CELLS else KIND_UNSURE


def call_kinds(parts: list[tuple[int, int, int]], n_ubatch: int) -> list[bytearray]:
    """The kernel each token of one decode call takes: `parts` are (sequence id, first position, end) in the call's
    order, ids ascending, each sequence once. llama.cpp (a KV stream per sequence) cuts such a call into micro-batches
    of runs of consecutive ids, the same number of tokens from each sequence of a run (its split_equal): so a
    sequence's tokens may land in several micro-batches, and a token may be alone in one."""
    done = [start for _, start, _ in parts]
    kinds = [bytearray() for _ in parts]
    while any(at < end for at, (_, _, end) in zip(done, parts, strict=True)):
        run = [next(i for i, (_, _, end) in enumerate(parts) if done[i] < end)]
        for i in range(run[0] + 1, len(parts)):
            if done[i] == parts[i][2]:
                continue
            if parts[i][0] != parts[run[-1]][0] + 1:
                break
            run.append(i)
        k = max(1, min(min(parts[i][2] - done[i] for i in run), n_ubatch // len(run)))
        alone = len(run) == 1  # beside another sequence a token never takes the split kernel
        for i in run:
            kinds[i] += bytes([call_kind(k, done[i] + k) if alone else call_kind(k, 0)]) * k
            done[i] += k
    return kinds


def prompt_kinds(ends: list[int]) -> bytearray:
    """The kernel of each cell of a prompt prefilled cold, in its chunks (`ends`)."""
    kinds = bytearray()
    for end in ends:
        kinds += bytes([call_kind(end - len(kinds), end)]) * (end - len(kinds))
    return kinds


class Slots:
    """Free slots, each with the tokens its KV cells still hold and the kernel of each cell; the least recently used
    cache is evicted first. With `exact` off (HERD_PREFILL_PACK, which promises no exactness), a cached prefix is
    reused up to the last of the new prompt's cuts within the tokens they share."""

    def __init__(self, n: int, exact: bool = True) -> None:
        self._free: dict[int, tuple[list[int], bytes]] = {i: ([], b"") for i in range(n)}
        self._released_at: dict[int, int] = dict.fromkeys(range(n), 0)
        self._clock = 0
        self._exact = exact

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def cached(self) -> int:
        """Tokens whose KV cells free slots keep for the next prompt (the heartbeat's KV-cache use)."""
        return sum(len(held) for held, _ in self._free.values())

    def take(self, prompt: list[int], ends: list[int]) -> tuple[int, int, int]:
        """The slot holding the longest reusable prefix of `prompt` (chunked at `ends`): (slot, prompt tokens
        reused, tokens it holds). At least the prompt's last token is left to compute: its logits give the first new
        token.
        """
        want = bytes(prompt_kinds(ends)) if self._exact else b""
        best, best_len = -1, 0
        for slot, (held, kinds) in self._free.items():
            reused = _reusable(held, kinds, prompt, ends, want) if self._exact else _loose(held, prompt, ends)
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

    def give_back(self, slot: int, held: list[int], kinds: bytes | bytearray) -> None:
        """Return `slot`, whose cells hold `held` (a prompt, then maybe tokens generated), computed with `kinds`."""
        self._clock += 1
        self._free[slot] = (held, bytes(kinds[: len(held)]))
        self._released_at[slot] = self._clock


def _loose(held: list[int], prompt: list[int], ends: list[int]) -> int:
    """The last of the prompt's cuts within the tokens it shares with `held` (but not the whole prompt)."""
    limit = min(_common_prefix(held, prompt), len(prompt) - 1)
    return ends[bisect.bisect_right(ends, limit) - 1] if ends and ends[0] <= limit else 0


def _reusable(held: list[int], kinds: bytes, prompt: list[int], ends: list[int], want: bytes) -> int:
    """How much of `held` (its cells computed with `kinds`) a prompt chunked at `ends` (a cold run computes its
    cells with `want`) reuses: the tokens they share whose cells a cold run computes with the same kernel, cut back
    so that the rest of the chunk it stops in keeps its kernel (TILE tokens or more of a tiled chunk; of a short one,
    2 or more where a lone token could take the split kernel)."""
    n = min(_common_prefix(held, prompt), len(prompt) - 1, len(kinds))
    if n <= 0:
        return 0
    i = 0
    while i < n and kinds[i] == want[i] and want[i] != KIND_UNSURE:
        i += 1
    at = bisect.bisect_right(ends, i)
    start, end = (ends[at - 1] if at else 0), ends[at]
    if i > start:  # the rest of the chunk, computed in one call, must take the chunk's kernel
        rest = TILE if want[start] == KIND_TILED else 1 if end <= LONE_CELLS else 2
        i = max(start, min(i, end - rest))
    return i
