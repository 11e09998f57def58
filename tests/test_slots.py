"""The prefix cache (workers/slots.py): prompt-derived prefill chunks, so a cached prefix of any length is reused
exactly (a warm run computes what a cold run would have), and each prompt gets the slot with the most to reuse.
Pure functions first, then the batcher in process against the scripted engine (tests/fake_engine.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from herd.inference import ChatMessage, Finished, GenerationRequest, SamplingParams, StreamEvent, TokenDelta
from herd.workers.batcher import Batcher
from herd.workers.slots import KIND_ROW as ROW
from herd.workers.slots import KIND_UNSURE as UNSURE
from herd.workers.slots import Slots, call_kinds, chunk_ends, message_opener, prompt_kinds

from tests.fake_engine import BOS, Decode, ScriptedEngine

SYSTEM = "Be brief."  # a system message far shorter than a prefill chunk
TURN = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
SCRIPT = {TURN.format(q="Hi"): "Hello.", TURN.format(q="Yo"): "Yo yourself."}
OPEN = 9  # the opener token in the pure tests
NL = 10  # a newline: it closes a message's header (OPEN, a role, NL)


def ends(prompt: list[int], chunk: int = 64, opener: int = OPEN) -> list[int]:
    return chunk_ends(prompt, opener, chunk, lambda token: token == NL)


def cold(prompt: list[int], *generated: int, chunk: int = 64) -> bytes:
    """The kernels of a prompt's cells prefilled cold in its chunks, then of generated tokens' cells."""
    return bytes(prompt_kinds(ends(prompt, chunk))) + bytes(generated)


def test_chunks_end_after_every_message_header_but_the_first_and_every_chunk_within_a_message() -> None:
    # BOS, system (OPEN 5 NL 2 3), user (OPEN 6 NL 7 8), the generation prompt (OPEN 5 NL): one cut after the user's
    # header, none after the first header; the prompt's end closes the last.
    prompt = [1, OPEN, 5, NL, 2, 3, OPEN, 6, NL, 7, 8, OPEN, 5, NL]
    assert ends(prompt) == [9, 14]
    long_message = [1, OPEN, 5, NL, *range(20, 30), OPEN, 6, NL, 7]
    assert ends(long_message, chunk=4) == [4, 8, 12, 16, 17, 18]  # every 4 tokens, and after the header at 17
    assert ends([1, OPEN, 5, NL, 2, OPEN, 7, 8]) == [5, 8]  # a header that never closes: the cut is before it
    assert ends(prompt, chunk=4, opener=-1) == [4, 8, 12, 14]  # no messages: every 4 tokens
    assert ends([5]) == [1]


def test_a_header_after_a_long_chunk_is_a_chunk_of_its_own() -> None:
    # A long message (a document) and the generation prompt: the header does not join the document's last chunk, so
    # the same prompt sent again recomputes only its last token (past 256 cells: 2); after a short chunk it joins it.
    document = [1, OPEN, 5, NL, *range(20, 60), OPEN, 7, NL]
    assert ends(document) == [44, 47]
    question = [1, OPEN, 5, NL, *range(20, 30), OPEN, 7, NL]
    assert ends(question) == [17]
    slots = Slots(1)
    slots.give_back(slots.take(document, ends(document))[0], [*document, 70], cold(document, ROW))
    assert slots.take(document, ends(document))[1] == 46


def test_call_kinds_follow_llama_cpps_micro_batches() -> None:
    # Runs of consecutive sequence ids share micro-batches, the same number of tokens from each (llama.cpp's
    # split_equal): a sequence's tokens may fall in several, and a token alone in one is unsure.
    assert call_kinds([(0, 0, 5), (1, 0, 3)], 512) == [bytearray(b"rrrrr"), bytearray(b"rrr")]
    # then 1 token of sequence 1 alone: the short chunks' kernel within 256 cells, maybe the split one past them
    assert call_kinds([(0, 0, 4), (1, 0, 5)], 512) == [bytearray(b"rrrr"), bytearray(b"rrrrr")]
    assert call_kinds([(0, 300, 304), (1, 300, 305)], 512) == [bytearray(b"rrrr"), bytearray(b"rrrr?")]
    assert call_kinds([(0, 9, 10), (2, 256, 257)], 512) == [bytearray(b"r"), bytearray(b"?")]  # not consecutive
    assert call_kinds([(3, 0, 70), (4, 0, 80)], 512) == [bytearray(b"t" * 70), bytearray(b"t" * 70 + b"r" * 10)]
    assert call_kinds([(3, 0, 70), (4, 0, 140)], 512) == [bytearray(b"t" * 70), bytearray(b"t" * 140)]
    assert call_kinds([(3, 0, 70), (4, 0, 30)], 512) == [bytearray(b"r" * 70), bytearray(b"r" * 30)]  # 30, then 40
    assert call_kinds([(0, 0, 6), (1, 0, 6)], 8) == [bytearray(b"rrrrrr"), bytearray(b"rrrrrr")]  # 4 + 2 each


def test_the_opener_is_the_first_control_token_followed_by_text() -> None:
    def is_control(token: int) -> bool:
        return token in (BOS, OPEN, 8)

    assert message_opener([BOS, OPEN, 6, 8, OPEN], is_control) == OPEN  # Llama 3: BOS, then <|start_header_id|>
    assert message_opener([OPEN, 6, 8, OPEN, 5], is_control) == OPEN  # ChatML where BOS is <|im_start|>
    assert message_opener([5, 6, 7], is_control) == -1


def test_prompts_sharing_a_system_prompt_share_its_chunks_and_the_next_header() -> None:
    system = [OPEN, 5, NL, *range(20, 25)]  # 8 tokens: shorter than a chunk
    a = [1, *system, OPEN, 6, NL, 40, 41, OPEN, 7, NL]
    b = [1, *system, OPEN, 6, NL, 50, 51, 52, 53, OPEN, 7, NL]
    shared = 1 + len(system) + 3  # BOS, the system message, the user's header
    assert [e for e in ends(a) if e <= shared] == [e for e in ends(b) if e <= shared] == [shared]
    slots = Slots(2)
    slot, _, _ = slots.take(a, ends(a))
    slots.give_back(slot, [*a, 77, 78], cold(a, ROW, ROW))  # the prompt and two generated tokens
    assert slots.take(b, ends(b)) == (slot, shared, len(a) + 2)


def test_a_prompt_takes_the_slot_with_the_longest_reusable_prefix() -> None:
    other = [1, OPEN, 5, NL, 2, OPEN, 6, NL, 7]
    short = [1, OPEN, 5, NL, 3, OPEN, 6, NL, 7]
    long_ = [1, OPEN, 5, NL, 3, OPEN, 6, NL, 7, 8, OPEN, 6, NL, 4]
    slots = Slots(3)
    for prompt in (other, short, long_):
        slots.give_back(slots.take([], [])[0], prompt, cold(prompt))
    again = [*long_[:-1], 2]
    assert slots.take(again, ends(again)) == (2, 13, len(long_))
    # The same prompt again reuses all but its last token (its logits give the first new one), never the whole;
    # here the last chunk is 1 token (the user's), computed alone, which is never reused: so the chunk before it.
    assert slots.take(short, ends(short))[:2] == (1, 8)
    # Nothing to reuse: the cache used longest ago goes.
    assert slots.take([3, 3], [2]) == (0, 0, len(other))


def test_the_next_turn_reuses_the_reply_computed_beside_another_sequence() -> None:
    # Turn 2 repeats turn 1's prompt and its reply. Reply tokens decoded beside another sequence took the kernel a
    # short chunk takes, as a cold run of turn 2 computes them: reused, leaving 2 tokens or more of their chunk. A
    # reply decoded alone is not (its kernel may have been the split one): reuse stops at turn 1's prompt.
    turn1 = [1, OPEN, 5, NL, 2, OPEN, 6, NL, 3, OPEN, 7, NL]
    turn2 = [*turn1, 70, 71, OPEN, 6, NL, 4, OPEN, 7, NL]
    assert len(turn1) in ends(turn2) and len(turn1) + 5 in ends(turn2)
    slots = Slots(1)
    slot, _, _ = slots.take(turn1, ends(turn1))
    slots.give_back(slot, [*turn1, 70, 71], cold(turn1, ROW, ROW))
    assert slots.take(turn2, ends(turn2))[1] == len(turn1) + 2
    slots.give_back(slot, [*turn1, 70, 71, OPEN, 6], cold(turn1, ROW, ROW, ROW, ROW))
    assert slots.take(turn2, ends(turn2))[1] == len(turn1) + 4  # the chunk's last token is computed
    slots.give_back(slot, [*turn1, 70, 71], cold(turn1, ROW, UNSURE))
    assert slots.take(turn2, ends(turn2))[1] == len(turn1) + 1
    slots.give_back(slot, [*turn1, 70, 71], cold(turn1, UNSURE, ROW))
    assert slots.take(turn2, ends(turn2))[1] == len(turn1)


def test_a_cached_prefix_is_reused_only_as_far_as_its_kernels_are_a_cold_runs() -> None:
    prompt = list(range(100, 300))  # no messages: chunks of `chunk` tokens
    slots = Slots(1)
    slots.give_back(0, prompt, cold(prompt, chunk=64))  # 64 + 64 + 64 tiled, then 8 short
    assert slots.take(prompt, ends(prompt, chunk=32))[1] == 0  # a cold run of 32-token chunks: other kernels
    slots.give_back(0, prompt, cold(prompt, chunk=64))
    assert slots.take(prompt, ends(prompt, chunk=64))[1] == 199  # the last (of the short chunk) is computed
    # Within a tiled chunk, the rest it leaves to compute must be a tiled call too: 64 tokens or more.
    slots.give_back(0, [*prompt[:150], 7], cold(prompt[:150], chunk=256) + bytes([ROW]))
    assert slots.take(prompt, ends(prompt, chunk=256))[1] == 200 - 64
    slots.give_back(0, prompt[:100], cold(prompt[:100], chunk=256))  # a call of 100: tiled too
    assert slots.take(prompt, ends(prompt, chunk=256))[1] == 100
    slots.give_back(0, prompt[:40], cold(prompt[:40], chunk=256))  # a call of 40: not tiled
    assert slots.take(prompt, ends(prompt, chunk=256))[1] == 0


def chat(rid: str, question: str) -> GenerationRequest:
    messages = (ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=question))
    return GenerationRequest(id=rid, model="m", messages=messages, sampling=SamplingParams(temperature=0.0))


async def serve(*requests: GenerationRequest) -> tuple[ScriptedEngine, list[tuple[str, StreamEvent]], list[int]]:
    """Run `requests` one after another on one slot; the engine, the events and where each one's decodes start."""
    engine = ScriptedEngine(SCRIPT, max_seqs=1, n_ctx_seq=256, n_batch=64)
    log: list[tuple[str, StreamEvent]] = []
    batcher = Batcher(engine, "w1", lambda events, _: log.extend(events), 1000, 64, prefill_budget=64)
    starts: list[int] = []
    with ThreadPoolExecutor(max_workers=1) as thread:
        batcher.start(thread)
        for req in requests:
            starts.append(len(engine.decodes))
            await asyncio.wait_for(batcher.run(req), 60)
        await batcher.stop()
    assert engine.mistakes == []
    return engine, log, starts


def cached(log: list[tuple[str, StreamEvent]], rid: str) -> int:
    (done,) = [e for r, e in log if r == rid and isinstance(e, Finished)]
    return done.usage.cached_tokens


def prefill(decodes: list[Decode]) -> list[Decode]:
    return [d for d in decodes if len(d.tokens) > 1 or not d.logits[0]]


async def test_a_short_shared_system_prompt_is_reused_and_computed_as_in_a_cold_run() -> None:
    warm_engine, log, (_, second) = await serve(chat("a", "Hi"), chat("b", "Yo"))
    cold_engine, cold_log, _ = await serve(chat("b", "Yo"))
    # The system message and the user's header, which both prompts share (chunks end after every message's header).
    shared = len(warm_engine.tokenize("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n", add_special=True))
    assert cached(log, "b") == shared
    assert cached(cold_log, "b") == 0
    # The warm run computes exactly the chunks a cold run computes after the shared part, and the cold run's chunks
    # of the shared part are those the first request left in the slot.
    cold = prefill(cold_engine.decodes)
    assert prefill(warm_engine.decodes[second:]) == [d for d in cold if d.positions[0] >= shared]
    assert [d for d in cold if d.positions[0] < shared] == [
        d for d in prefill(warm_engine.decodes[:second]) if d.positions[0] < shared
    ]
    assert all(d.tokens[-1] == ord("\n") for d in cold)  # every chunk ends where a header does
    texts = ["".join(e.text for r, e in events if r == "b" and isinstance(e, TokenDelta)) for events in (log, cold_log)]
    assert texts == ["Yo yourself."] * 2
