"""The prefix cache (workers/slots.py): prompt-derived prefill chunks, so a cached prefix of any length is reused
exactly (a warm run computes what a cold run would have), and each prompt gets the slot with the most to reuse.
Pure functions first, then the batcher in process against the scripted engine (tests/fake_engine.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from herd.inference import ChatMessage, Finished, GenerationRequest, SamplingParams, StreamEvent, TokenDelta
from herd.workers.batcher import Batcher
from herd.workers.slots import Slots, chunk_ends, message_opener

from tests.fake_engine import BOS, CONTROL, Decode, ScriptedEngine

SYSTEM = "Be brief."  # a system message far shorter than a prefill chunk
TURN = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
SCRIPT = {TURN.format(q="Hi"): "Hello.", TURN.format(q="Yo"): "Yo yourself."}
OPEN = 9  # the opener token in the pure tests


def test_chunks_end_before_every_message_and_every_chunk_within_one() -> None:
    prompt = [1, OPEN, 2, 3, OPEN, *range(10, 20), OPEN, 4]
    assert chunk_ends(prompt, OPEN, 4) == [1, 4, 8, 12, 15, 17]
    assert chunk_ends(prompt, -1, 4) == [4, 8, 12, 16, 17]  # no messages: every 4 tokens
    assert chunk_ends([5], OPEN, 4) == [1]


def test_the_opener_is_the_first_control_token_followed_by_text() -> None:
    def is_control(token: int) -> bool:
        return token in (BOS, OPEN, 8)

    assert message_opener([BOS, OPEN, 6, 8, OPEN], is_control) == OPEN  # Llama 3: BOS, then <|start_header_id|>
    assert message_opener([OPEN, 6, 8, OPEN, 5], is_control) == OPEN  # ChatML where BOS is <|im_start|>
    assert message_opener([5, 6, 7], is_control) == -1


def test_prompts_sharing_a_message_share_its_chunks() -> None:
    system = [OPEN, *range(20, 27)]  # 8 tokens: shorter than a chunk
    a, b = [1, *system, OPEN, 40, 41], [1, *system, OPEN, 50, 51, 52, 53, 54]
    shared = len(system) + 1
    ends_a, ends_b = chunk_ends(a, OPEN, 64), chunk_ends(b, OPEN, 64)
    assert [e for e in ends_a if e <= shared] == [e for e in ends_b if e <= shared] == [1, shared]
    slots = Slots(2)
    slot, _, _ = slots.take(a, ends_a)
    slots.give_back(slot, [*a, 77, 78], ends_a)  # the prompt and two generated tokens
    assert slots.take(b, ends_b) == (slot, shared, len(a) + 2)


def test_a_prompt_takes_the_slot_with_the_longest_reusable_prefix() -> None:
    other, short, long_ = [1, OPEN, 2, OPEN, 7], [1, OPEN, 5, 6, OPEN, 7], [1, OPEN, 5, 6, OPEN, 7, 8, 9, OPEN, 3]
    slots = Slots(3)
    for prompt in (other, short, long_):
        slots.give_back(slots.take([], [])[0], prompt, chunk_ends(prompt, OPEN, 64))
    again = [*long_[:-1], 4]
    slot, reused, held = slots.take(again, chunk_ends(again, OPEN, 64))
    assert (slot, reused, held) == (2, 8, len(long_))
    # The same prompt again reuses all but its last message (its logits give the first token), never the whole.
    assert slots.take(short, chunk_ends(short, OPEN, 64))[:2] == (1, 4)
    # Nothing to reuse: the cache used longest ago goes.
    assert slots.take([3, 3], [2]) == (0, 0, len(other))


def test_generated_tokens_are_not_reused_as_if_prefilled() -> None:
    # Turn 2 repeats turn 1's prompt and its reply: the reply's cells came from decode steps, one token each, which
    # a cold run of turn 2 computes as a chunk; so reuse stops at turn 1's last cut (its assistant header).
    turn1 = [1, OPEN, 5, OPEN, 6]
    turn2 = [*turn1, 70, 71, OPEN, 7, OPEN, 8]
    slots = Slots(1)
    slot, _, _ = slots.take(turn1, chunk_ends(turn1, OPEN, 64))
    slots.give_back(slot, [*turn1, 70, 71], chunk_ends(turn1, OPEN, 64))
    assert slots.take(turn2, chunk_ends(turn2, OPEN, 64))[1] == 3


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
    system_part = len(warm_engine.tokenize("<|im_start|>system\nBe brief.<|im_end|>\n", add_special=True))
    assert cached(log, "b") == system_part
    assert cached(cold_log, "b") == 0
    # The warm run computes exactly the chunks a cold run computes after the shared part, and the cold run's chunks
    # of the shared part are those the first request left in the slot.
    cold = prefill(cold_engine.decodes)
    assert prefill(warm_engine.decodes[second:]) == [d for d in cold if d.positions[0] >= system_part]
    assert [d for d in cold if d.positions[0] < system_part] == [
        d for d in prefill(warm_engine.decodes[:second]) if d.positions[0] < system_part
    ]
    assert all(CONTROL not in d.tokens[1:] for d in cold)  # every chunk is within one message
    texts = ["".join(e.text for r, e in events if r == "b" and isinstance(e, TokenDelta)) for events in (log, cold_log)]
    assert texts == ["Yo yourself."] * 2
