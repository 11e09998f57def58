"""The continuous-batching scheduler (workers/batcher.py) in process, on its real engine thread, against a scripted
engine (tests/fake_engine.py) whose "model" reads each sequence's KV cells: admission between steps, the sequence
limit, cancellation, stop rules, prefill chunks, the prefix cache, n > 1 forks, and failures that stay contained."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from herd.errors import ErrorKind
from herd.inference import (
    Embedded,
    EmbeddingRequest,
    Failed,
    Finished,
    GenerationRequest,
    Grammar,
    RequestStats,
    SamplingParams,
    Started,
    StreamEvent,
    TokenDelta,
)
from herd.workers.batcher import Batcher
from herd.workers.steps import SHARE

from tests.fake_engine import BAD_GRAMMAR, POISON, ScriptedEngine

SCRIPT = {
    "Hi": "Hello there.",
    "Count": "one two three four five six seven",
    "Yo": "Yo yourself.",
    "Story": "once upon a time, the end",
    "abcdefghi": "XY",
    "Bad": f"ab{POISON}cd",
}


@dataclass
class Events:
    """The batcher's `emit`: every event in the order the event loop got them, and the request stats."""

    log: list[tuple[str, StreamEvent]] = field(default_factory=list)
    stats: list[RequestStats] = field(default_factory=list)

    def __call__(self, events: list[tuple[str, StreamEvent]], stats: list[RequestStats]) -> None:
        self.log.extend(events)
        self.stats.extend(stats)

    def of(self, rid: str) -> list[StreamEvent]:
        return [event for r, event in self.log if r == rid]

    def text(self, rid: str, index: int = 0) -> str:
        return "".join(e.text for e in self.of(rid) if isinstance(e, TokenDelta) and e.index == index)

    def position(self, rid: str, kind: type[StreamEvent]) -> int:
        """Where the first `kind` event of `rid` sits in the log."""
        return next(i for i, (r, e) in enumerate(self.log) if r == rid and isinstance(e, kind))

    def finished(self, rid: str) -> list[Finished]:
        return [e for e in self.of(rid) if isinstance(e, Finished)]

    def failed(self, rid: str) -> Failed:
        (failure,) = [e for e in self.of(rid) if isinstance(e, Failed)]
        return failure


@dataclass
class Run:
    batcher: Batcher
    engine: ScriptedEngine
    events: Events

    async def generate(self, rid: str, prompt: str, **fields: Any) -> None:
        """Run one request to its end (a batcher that never ends it fails the test instead of hanging it)."""
        await asyncio.wait_for(self.batcher.run(request(rid, prompt, **fields)), GUARD_S)


MakeRun = Callable[..., Run]
GUARD_S = 60  # no test waits this long unless the batcher lost a request


@pytest.fixture
async def make_run() -> AsyncIterator[MakeRun]:
    made: list[tuple[Run, ThreadPoolExecutor]] = []

    def make(
        max_seqs: int = 4, n_ctx_seq: int = 64, prefill_chunk: int = 4, cap: int = 1000, pack: bool = False
    ) -> Run:
        engine = ScriptedEngine(SCRIPT, max_seqs=max_seqs, n_ctx_seq=n_ctx_seq, n_batch=8)
        events = Events()
        batcher = Batcher(engine, "w1", events, cap, prefill_chunk, prefill_budget=4, prefill_pack=pack)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-engine")
        batcher.start(thread)
        made.append((Run(batcher, engine, events), thread))
        return made[-1][0]

    yield make
    for run, thread in made:
        await run.batcher.stop()
        thread.shutdown()
        assert not run.batcher.alive
        assert run.engine.mistakes == []
        assert run.engine.live_samplers == set(), "samplers never freed"
        for rid in {r for r, _ in run.events.log}:
            assert [e.seq for e in run.events.of(rid)] == list(range(len(run.events.of(rid)))), rid


def request(rid: str, prompt: str, **fields: Any) -> GenerationRequest:
    return GenerationRequest(id=rid, model="m", prompt=prompt, sampling=SamplingParams(temperature=0.0), **fields)


async def finish(*tasks: asyncio.Task[None]) -> None:
    await asyncio.wait_for(asyncio.gather(*tasks), GUARD_S)


async def submit(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Start `work` and let it reach the batcher's inbox before going on."""
    task = asyncio.create_task(work)
    await asyncio.sleep(0)
    return task


async def test_a_request_runs_to_its_end_of_generation(make_run: MakeRun) -> None:
    run = make_run()
    await run.generate("r", "Hi")
    events = run.events.of("r")
    assert events[0] == Started(0, "w1", 3)  # BOS + "Hi"
    assert run.events.text("r") == "Hello there."
    (done,) = run.events.finished("r")
    assert (done.finish_reason, done.usage.prompt_tokens, done.usage.completion_tokens) == ("stop", 3, 12)
    assert events[-1] is done
    (stats,) = run.events.stats
    assert (stats.request_id, stats.finish_reason, stats.completion_tokens) == ("r", "stop", 12)
    assert (run.batcher.counters.tokens_generated, run.batcher.counters.requests_done, run.batcher.busy) == (12, 1, 0)


async def test_a_prompt_is_prefilled_in_aligned_chunks(make_run: MakeRun) -> None:
    run = make_run(prefill_chunk=4)
    await run.generate("r", "abcdefghi")  # 10 tokens with BOS
    prefill = run.engine.decodes[:3]
    assert [d.positions for d in prefill] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [d.logits for d in prefill] == [(False,) * 4, (False,) * 4, (False, True)]  # logits for the last only
    assert [len(d.tokens) for d in run.engine.decodes[3:]] == [1, 1]  # then one token per step: "Y", end
    assert run.events.text("r") == "XY"


async def test_the_next_request_reuses_the_cached_prefix_to_any_token(make_run: MakeRun) -> None:
    run = make_run(max_seqs=1, prefill_chunk=4)
    await run.generate("a", "abcdefghi")
    first = len(run.engine.decodes)
    await run.generate("b", "abcdefghi")
    (done,) = run.events.finished("b")
    assert done.usage.cached_tokens == 9  # 10 prompt tokens: the last is computed again (its logits)
    assert run.engine.decodes[first].positions == (9,)
    assert run.events.text("b") == "XY"
    await run.generate("d", "abcdefghiXY")  # "b" and its reply's first token (decoded alone, within 256 cells)
    assert run.events.finished("d")[0].usage.cached_tokens == 11
    await run.generate("c", "abcdefgh-")  # shares 9 tokens with what the slot holds
    assert run.events.finished("c")[0].usage.cached_tokens == 9


async def test_waiting_prompts_share_a_prefill_call(make_run: MakeRun) -> None:
    run = make_run(max_seqs=4, prefill_chunk=4)
    run.engine.hold()
    blocker = await submit(run.batcher.run(request("x", "Hi", max_tokens=1)))
    await run.engine.held()
    tasks = [await submit(run.batcher.run(request(r, p))) for r, p in (("a", "Yo"), ("b", "Story"))]
    run.engine.release()
    await finish(blocker, *tasks)
    assert (run.events.text("a"), run.events.text("b")) == (SCRIPT["Yo"], SCRIPT["Story"])
    # Nothing generates when they start: one call holds "Yo" (2 tokens: the BOS "Hi" left in slot 0 is reused) and
    # the first chunk of "Story" (4 tokens), in sequence id order; then the rest of "Story" beside "Yo"'s steps.
    shared = run.engine.decodes[1]
    assert shared.seq_ids == (0, 0, 1, 1, 1, 1) and shared.positions == (1, 2, 0, 1, 2, 3)
    assert shared.logits == (False, True, False, False, False, False)


async def test_a_chunk_shares_a_call_only_where_it_keeps_its_kernel() -> None:
    # Chunks of 64 tokens or more take llama.cpp's tiled attention kernel, shorter ones another (workers/slots.py):
    # a long chunk shares a call with another long one (each keeps 64 tokens or more in every micro-batch), never
    # with a short one (which would cut it into short micro-batches); and a prompt whose chunk is 1 token is alone.
    long_a, long_b, short = "a" * 70, "b" * 70, "Yo"
    engine = ScriptedEngine({long_a: "A.", long_b: "B.", short: "Y."}, max_seqs=4, n_ctx_seq=128, n_batch=256)
    events = Events()
    batcher = Batcher(engine, "w1", events, 1000, 256, prefill_budget=256)
    with ThreadPoolExecutor(max_workers=1) as thread:
        batcher.start(thread)
        engine.hold()
        blocker = await submit(batcher.run(request("x", "Hi", max_tokens=1)))
        await engine.held()
        tasks = [await submit(batcher.run(request(r, p))) for r, p in (("a", long_a), ("s", short), ("b", long_b))]
        engine.release()
        await finish(blocker, *tasks)
        await batcher.stop()
    assert engine.mistakes == []
    assert [events.text(r) for r in "asb"] == ["A.", "Y.", "B."]
    prefills = [{chr(t) for t in d.tokens if t > 1} for d in engine.decodes[1:] if len(d.tokens) > 1]
    assert prefills[:2] == [{"a", "b"}, {"Y", "o"}], prefills  # the oldest prompt's call first


async def test_a_request_joins_a_running_batch_between_steps(make_run: MakeRun) -> None:
    run = make_run()
    run.engine.hold(after=5)  # "Count" is 6 tokens: 2 prefill chunks, then decode steps
    first = await submit(run.batcher.run(request("a", "Count")))
    await run.engine.held()
    second = await submit(run.batcher.run(request("b", "Hi")))
    run.engine.release()
    await finish(first, second)
    assert run.events.text("a") == SCRIPT["Count"] and run.events.text("b") == SCRIPT["Hi"]
    log = run.events
    assert log.position("a", TokenDelta) < log.position("b", Started) < log.position("a", Finished)
    a_slot = run.engine.decodes[0].seq_ids[0]
    shared = [d for d in run.engine.decodes if a_slot in d.seq_ids and len(set(d.seq_ids)) == 2]
    assert shared, "the two sequences never decoded in one step"
    assert any(len(d.tokens) == 2 for d in shared)  # a decode step: one token for each sequence


async def test_each_prompt_of_a_step_sends_its_first_token_after_its_own_prefill(make_run: MakeRun) -> None:
    # A burst of requests is prefilled in one step, a decode call each: the first prompt's first token must not wait
    # for the other prompts' calls (and the step's decode) before it leaves for the client.
    run = make_run(max_seqs=4, prefill_chunk=4)
    run.engine.hold()  # decode 0: the first chunk of "Count" (6 tokens: decodes 0 and 1)
    first = await submit(run.batcher.run(request("x", "Count")))
    await run.engine.held()
    a = await submit(run.batcher.run(request("a", "Hi")))  # both wait in the inbox: admitted in the same step
    b = await submit(run.batcher.run(request("b", "Yo")))
    # x's step ends with its second token (decode 2); the next step: "a" prefilled (decode 3), "b" (decode 4, held),
    # then x's token
    run.engine.release(then=4)
    await run.engine.held()
    assert run.engine.decodes[3].seq_ids != run.engine.decodes[2].seq_ids and len(run.engine.decodes) == 4
    assert any(isinstance(e, TokenDelta) for e in run.events.of("a")), run.events.of("a")
    assert not any(isinstance(e, TokenDelta) for e in run.events.of("b"))
    run.engine.release()
    await finish(first, a, b)
    assert (run.events.text("a"), run.events.text("b")) == (SCRIPT["Hi"], SCRIPT["Yo"])


async def test_a_prompt_that_starts_generating_waits_no_longer_than_a_running_stream(make_run: MakeRun) -> None:
    # A step that starts with nothing generating prefills up to n_batch tokens; once a prompt of it has its first
    # token, that stream waits on the step like any other: at most the prefill budget more, then its next token.
    run = make_run(max_seqs=4, prefill_chunk=4)
    run.engine.hold()
    blocker = await submit(run.batcher.run(request("x", "Hi", max_tokens=1)))
    await run.engine.held()
    tasks = [await submit(run.batcher.run(request(r, p))) for r, p in (("a", "Yo"), ("b", "abcdefghi"))]
    run.engine.release()
    await finish(blocker, *tasks)
    assert (run.events.text("a"), run.events.text("b")) == (SCRIPT["Yo"], SCRIPT["abcdefghi"])
    calls = run.engine.decodes[1:]
    a_slot = calls[0].seq_ids[0]  # "Yo" is the oldest prompt: its chunk comes first
    with_a = [i for i, d in enumerate(calls) if (a_slot, True) in zip(d.seq_ids, d.logits, strict=True)]
    between = calls[with_a[0] + 1 : with_a[1]]  # after the call that gave "Yo" its first token, before its second
    assert sum(len(d.tokens) for d in between) <= 4, [d.seq_ids for d in calls]  # the budget: one chunk of "b"


@contextlib.asynccontextmanager
async def counting(
    prompts: dict[str, str], n_ctx_seq: int, prefill_chunk: int
) -> AsyncIterator[tuple[Run, asyncio.Task[None]]]:
    """A batcher over calls of up to 256 tokens with a 1024-token prefill budget, and "Count" (request "c") decoding:
    the engine holds its second decode step, so what the test submits meanwhile arrives while a stream waits."""
    engine = ScriptedEngine({"Count": SCRIPT["Count"], **prompts}, n_ctx_seq=n_ctx_seq, n_batch=256)
    events = Events()
    batcher = Batcher(engine, "w1", events, 1000, prefill_chunk, prefill_budget=1024)
    with ThreadPoolExecutor(max_workers=1) as thread:
        batcher.start(thread)
        try:
            engine.hold(after=2)  # "Count"'s prefill, its first decode step; then it waits on the third call
            running = await submit(batcher.run(request("c", "Count")))
            await engine.held()
            yield Run(batcher, engine, events), running
        finally:
            await batcher.stop()
    assert engine.mistakes == []


async def test_prompts_that_arrive_while_a_stream_decodes_each_take_a_short_call() -> None:
    # While a stream waits on the step, the step prefills up to the budget (here all three prompts: no decode call
    # between them), but one call holds at most SHARE tokens: each prompt gets its first token after a call of its
    # own, not after one call of all three.
    prompts = [letter * 40 for letter in "pqr"]
    async with counting(dict.fromkeys(prompts, "ok"), n_ctx_seq=128, prefill_chunk=256) as (run, running):
        tasks = [await submit(run.batcher.run(request(r, p))) for r, p in zip("pqr", prompts, strict=True)]
        run.engine.release()
        await finish(running, *tasks)
    assert [run.events.text(r) for r in "cpqr"] == [SCRIPT["Count"], "ok", "ok", "ok"]
    decodes = run.engine.decodes
    c_slot = decodes[0].seq_ids[0]
    first = next(i for i, d in enumerate(decodes) if c_slot not in d.seq_ids)  # the prompts' first call
    after = decodes[first:]
    between = after[: next(i for i, d in enumerate(after) if c_slot in d.seq_ids)]  # before "Count"'s next token
    assert 41 <= SHARE < 2 * 41  # a call may hold one of these prompts (BOS + 40 tokens), not two
    assert [len(d.tokens) for d in between] == [41, 41, 41], [d.seq_ids for d in between]


async def test_a_cancel_takes_effect_between_the_prefill_calls_of_a_step() -> None:
    # A step may prefill a long prompt in many calls (seconds on a CPU) while a stream waits: a cancel that arrives
    # meanwhile stops the prompt before its next call, not at the end of the step.
    long = "L" * 100
    async with counting({long: "ok"}, n_ctx_seq=256, prefill_chunk=16) as (run, running):
        cancelled = await submit(run.batcher.run(request("l", long)))
        run.engine.release(then=4)  # the next step: the long prompt's first chunk (call 3), its second (call 4, held)
        await run.engine.held()
        run.batcher.cancel("l")
        run.engine.release()
        await finish(running, cancelled)
    decodes = run.engine.decodes
    l_slot = decodes[3].seq_ids[0]
    assert decodes[3].seq_ids == decodes[4].seq_ids == (l_slot,) * 16
    assert all(l_slot not in d.seq_ids for d in decodes[5:]), [d.seq_ids for d in decodes[5:]]
    assert [(s.request_id, s.finish_reason) for s in run.events.stats] == [("l", "cancelled"), ("c", "stop")]
    assert run.events.text("c") == SCRIPT["Count"]


async def test_no_more_than_max_seqs_run_at_once(make_run: MakeRun) -> None:
    run = make_run(max_seqs=2)
    run.engine.hold()
    tasks = [await submit(run.batcher.run(request("a", "Count")))]
    await run.engine.held()  # "a" runs; "b" and "c" arrive together
    tasks += [await submit(run.batcher.run(request(r, p))) for r, p in (("b", "Hi"), ("c", "Yo"))]
    run.engine.release()
    await finish(*tasks)
    running, most = 0, 0
    for _, event in run.events.log:
        running += isinstance(event, Started) - isinstance(event, Finished | Failed)
        most = max(most, running)
    assert most == 2
    assert run.events.position("c", Started) > min(run.events.position(r, Finished) for r in "ab")
    assert [run.events.text(r) for r in "abc"] == [SCRIPT["Count"], SCRIPT["Hi"], SCRIPT["Yo"]]


async def test_cancel_drops_a_running_sequence_and_frees_its_slot(make_run: MakeRun) -> None:
    run = make_run(max_seqs=1)
    run.engine.hold(after=4)
    cancelled = await submit(run.batcher.run(request("a", "Count")))
    await run.engine.held()
    waiting = await submit(run.batcher.run(request("b", "Hi")))  # waits for the only slot
    run.batcher.cancel("a")
    run.engine.release()
    await finish(cancelled, waiting)
    partial = run.events.text("a")
    assert SCRIPT["Count"].startswith(partial) and len(partial) < len(SCRIPT["Count"])
    assert run.events.finished("a") == []  # a cancelled sequence sends nothing more
    assert [(s.request_id, s.finish_reason) for s in run.events.stats] == [("a", "cancelled"), ("b", "stop")]
    assert run.events.text("b") == SCRIPT["Hi"]  # admitted into the slot "a" left
    assert run.batcher.counters.requests_cancelled == 1


async def test_cancelling_the_awaiting_task_cancels_the_sequence(make_run: MakeRun) -> None:
    run = make_run(max_seqs=1)
    run.engine.hold(after=4)
    task = await submit(run.batcher.run(request("a", "Count")))
    await run.engine.held()
    task.cancel()
    await asyncio.sleep(0)
    run.engine.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    await run.generate("b", "Hi")
    assert run.events.finished("a") == [] and run.events.stats[0].finish_reason == "cancelled"
    assert run.events.text("b") == SCRIPT["Hi"]


async def test_a_waiting_or_not_yet_submitted_request_can_be_cancelled(make_run: MakeRun) -> None:
    run = make_run(max_seqs=1)
    run.engine.hold(after=2)
    running = await submit(run.batcher.run(request("a", "Hi")))
    await run.engine.held()
    waiting = await submit(run.batcher.run(request("b", "Yo")))
    run.batcher.cancel("b")
    run.engine.release()
    await finish(running, waiting)
    run.batcher.cancel("c")  # a cancel that arrives before its request does is kept for it
    await run.generate("c", "Yo")
    assert run.events.of("b") == [] and run.events.of("c") == []  # never admitted: not even Started
    assert run.events.text("a") == SCRIPT["Hi"]
    assert run.batcher.counters.requests_cancelled == 2 and run.batcher.busy == 0


@pytest.mark.parametrize(
    ("fields", "text", "reason", "completion"),
    [
        ({"stop": (", ",)}, "once upon a time", "stop", 18),  # the stop string is counted, not sent
        ({"stop": ("time", "a t")}, "once upon ", "stop", 13),  # the stop that begins first wins
        ({"max_tokens": 5}, "once ", "length", 5),
        ({}, SCRIPT["Story"], "stop", len(SCRIPT["Story"])),
    ],
)
async def test_stop_rules(make_run: MakeRun, fields: dict[str, Any], text: str, reason: str, completion: int) -> None:
    run = make_run()
    await run.generate("r", "Story", **fields)
    (done,) = run.events.finished("r")
    assert (run.events.text("r"), done.finish_reason, done.usage.completion_tokens) == (text, reason, completion)


async def test_the_worker_cap_and_the_context_end_a_reply(make_run: MakeRun) -> None:
    capped = make_run(cap=3)
    await capped.generate("r", "Story")
    assert (capped.events.text("r"), capped.events.finished("r")[0].finish_reason) == ("onc", "length")
    small = make_run(n_ctx_seq=16)  # "Count" is 6 tokens: 10 fit after it
    await small.generate("a", "Count")
    assert small.events.text("a") == SCRIPT["Count"][:10]
    await small.generate("b", "Count", max_tokens=20, fit_context=True)  # Ollama: cut to the room
    assert small.events.finished("b")[0].usage.completion_tokens == 10
    await small.generate("c", "Count", max_tokens=20)
    failure = small.events.failed("c")
    assert (failure.seq, failure.kind, failure.param) == (0, ErrorKind.CONTEXT_LENGTH_EXCEEDED, "prompt")
    assert "maximum context length is 16 tokens" in failure.message


async def test_a_request_refused_at_admission_fails_alone(make_run: MakeRun) -> None:
    run = make_run(max_seqs=2)
    run.engine.hold(after=3)
    good = await submit(run.batcher.run(request("good", "Count")))
    await run.engine.held()
    refused = [
        await submit(run.batcher.run(request("grammar", "Hi", grammar=Grammar(BAD_GRAMMAR)))),
        await submit(run.batcher.run(request("long", "x" * 70))),
        await submit(run.batcher.run(request("n", "Hi", n=3))),
        await submit(run.batcher.run(request("empty", ""))),
    ]
    run.engine.release()
    await finish(good, *refused)
    assert run.events.text("good") == SCRIPT["Count"] and run.events.finished("good")[0].finish_reason == "stop"
    kinds = {rid: (run.events.failed(rid).kind, run.events.failed(rid).param) for rid in ("grammar", "long", "n")}
    assert kinds == {
        "grammar": (ErrorKind.INVALID_REQUEST, "response_format"),
        "long": (ErrorKind.CONTEXT_LENGTH_EXCEEDED, "prompt"),
        "n": (ErrorKind.INVALID_REQUEST, "n"),
    }
    assert all(not isinstance(e, Started) for rid in kinds for e in run.events.of(rid))
    assert run.events.of("empty")[0] == Started(0, "w1", 1)  # an empty prompt continues from BOS


async def test_a_failed_decode_fails_its_step_and_the_thread_serves_on(make_run: MakeRun) -> None:
    run = make_run()
    run.engine.hold(after=3)
    bystander = await submit(run.batcher.run(request("a", "Count")))
    await run.engine.held()
    poisoned = await submit(run.batcher.run(request("bad", "Bad")))
    run.engine.release()
    await finish(bystander, poisoned)
    for rid in ("a", "bad"):  # every sequence of the failed step fails: their cells are not to be trusted
        failure = run.events.failed(rid)
        assert (failure.kind, failure.message) == (ErrorKind.ENGINE_ERROR, "llama_decode failed with status -1")
    assert run.events.text("bad") == f"ab{POISON}"  # sampled and sent; feeding it back failed
    assert all(cells == [] for cells in run.engine.cells.values())  # dropped, not kept as a prefix cache
    assert run.batcher.alive
    await run.generate("after", "Hi")
    assert run.events.text("after") == SCRIPT["Hi"]


async def test_n_choices_fork_one_prefill(make_run: MakeRun) -> None:
    run = make_run()
    await run.generate("r", "Hi", n=3)
    assert [e for e in run.events.of("r") if isinstance(e, Started)] == [Started(0, "w1", 3)]
    assert [run.events.text("r", i) for i in range(3)] == [SCRIPT["Hi"]] * 3
    assert sorted(f.index for f in run.events.finished("r")) == [0, 1, 2]
    source = run.engine.decodes[0].seq_ids[0]
    assert [s for s, _ in run.engine.forks] == [source, source] and len({t for _, t in run.engine.forks}) == 2
    assert sum(1 for d in run.engine.decodes if d.positions[0] == 0) == 1  # the prompt was prefilled once


async def test_logprobs_travel_with_the_text(make_run: MakeRun) -> None:
    run = make_run()
    await run.generate("r", "Hi", logprobs=1)
    deltas = [e for e in run.events.of("r") if isinstance(e, TokenDelta)]
    assert b"".join(lp.piece for d in deltas for lp in d.logprobs).decode() == SCRIPT["Hi"]
    assert all(len(lp.top) == 1 and lp.top[0][0] == lp.piece for d in deltas for lp in d.logprobs)


async def test_embeddings_run_between_decode_steps(make_run: MakeRun) -> None:
    run = make_run()
    generating = await submit(run.batcher.run(request("g", "Count")))
    embedding = await submit(run.batcher.embed(EmbeddingRequest(id="e", model="m", inputs=("abc", (5, 6)))))
    await finish(generating, embedding)
    started, embedded = run.events.of("e")
    assert started == Started(0, "w1", 0)
    assert isinstance(embedded, Embedded) and (embedded.dimensions, embedded.prompt_tokens) == (4, 6)
    assert len(embedded.vectors) == 2 * 4 * 4
    assert run.events.text("g") == SCRIPT["Count"]


# ---- HERD_PREFILL_PACK: several prompts and the decode step share one decode call ----------------------------------


async def test_packed_prefill_puts_several_prompts_and_the_decode_step_in_one_call(make_run: MakeRun) -> None:
    run = make_run(pack=True, prefill_chunk=8)
    run.engine.hold()
    first = await submit(run.batcher.run(request("a", "Count")))
    await run.engine.held()  # "a"'s whole prompt (6 tokens) is one call; "b" and "c" arrive meanwhile
    rest = [await submit(run.batcher.run(request(r, p))) for r, p in (("b", "Hi"), ("c", "Yo"))]
    run.engine.release()
    await finish(first, *rest)
    assert [run.events.text(r) for r in "abc"] == [SCRIPT["Count"], SCRIPT["Hi"], SCRIPT["Yo"]]
    opening, packed = run.engine.decodes[:2]
    assert opening.positions == tuple(range(6))
    assert packed.seq_ids == (0, 1, 1, 1, 2, 2, 2)  # ordered by sequence id (empty slots go lowest first)
    assert packed.positions == (6, 0, 1, 2, 0, 1, 2)  # "a"'s next token, then both prompts whole
    assert packed.logits == (True, False, False, True, False, False, True)
    assert len(run.engine.decodes) == 2 + len(SCRIPT["Count"]) - 1  # every later step: one call


async def test_packed_prefill_fills_calls_oldest_prompt_first(make_run: MakeRun) -> None:
    run = make_run(pack=True, prefill_chunk=8)
    run.engine.hold()
    blocker = await submit(run.batcher.run(request("x", "Hi", max_tokens=1)))
    await run.engine.held()
    tasks = [await submit(run.batcher.run(request(r, "abcdefghi"))) for r in "ab"]  # 10 tokens each
    run.engine.release()
    await finish(blocker, *tasks)
    assert run.events.text("a") == run.events.text("b") == "XY"
    calls = [d for d in run.engine.decodes[1:] if len(d.tokens) > 1]
    # Full calls: 8 of "a"; 2 of "a" + 6 of "b"; then "a"'s next token + the last 4 of "b".
    assert [(len(d.tokens), d.seq_ids.count(1)) for d in calls[:3]] == [(8, 8), (8, 2), (5, 1)]
    assert run.events.position("a", TokenDelta) < run.events.position("b", TokenDelta)


async def test_packed_prefill_keeps_running_streams_stepping(make_run: MakeRun) -> None:
    run = make_run(pack=True, prefill_chunk=3)
    run.engine.hold(after=1)
    running = await submit(run.batcher.run(request("a", "Count")))
    await run.engine.held()  # "a" is generating (its 6 prompt tokens took 2 calls of 3, 3)
    waiting = await submit(run.batcher.run(request("b", "abcdefghi")))
    run.engine.release()
    await finish(running, waiting)
    assert (run.events.text("a"), run.events.text("b")) == (SCRIPT["Count"], "XY")
    a_slot, b_slot = 0, 1
    prefilling = [d for d in run.engine.decodes if b_slot in d.seq_ids][:4]
    b_positions = [p for d in prefilling for p, s in zip(d.positions, d.seq_ids, strict=True) if s == b_slot]
    assert b_positions == list(range(10))
    assert [d.seq_ids.count(b_slot) for d in prefilling] == [3, 3, 3, 1]  # at most prefill_chunk tokens a step
    for call in prefilling:  # each carried "a"'s next token too, so "a" never waited a step for it
        assert call.seq_ids.count(a_slot) == 1 and call.logits[0]


async def test_packed_prefill_reuses_the_cache_and_forks_choices(make_run: MakeRun) -> None:
    run = make_run(pack=True, max_seqs=3)
    await run.generate("a", "abcdefghi")
    await run.generate("b", "abcdefghi")
    assert run.events.finished("b")[0].usage.cached_tokens == 8  # a cut of its chunking, as in the default mode
    await run.generate("n", "Hi", n=3)
    assert [run.events.text("n", i) for i in range(3)] == [SCRIPT["Hi"]] * 3
