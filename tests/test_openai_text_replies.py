"""api/translate/openai_text_replies.py as a unit: /v1/completions events -> legacy Completion chunks and the whole
Completion, validated strictly with the openai SDK's types (echo, list prompts with n choices each, logprobs, usage)."""

from __future__ import annotations

import json

import msgspec
from herd.api.translate.openai_text_replies import CompletionAssembler
from herd.inference import Finished, TokenDelta, TokenLogprob, Usage
from openai.types import Completion


def sdk(obj: object) -> Completion:
    """The object as a client gets it, read strictly by the SDK's Completion. The SDK reuses that type for stream
    chunks, whose finish_reason is null until the last (as OpenAI sends it) while the type allows no null: a null is
    checked here, then given to the validator as "stop" and put back."""
    data = json.loads(msgspec.json.encode(obj))
    open_choices = [c["index"] for c in data["choices"] if c["finish_reason"] is None]
    for choice in data["choices"]:
        choice["finish_reason"] = choice["finish_reason"] or "stop"
    completion = Completion.model_validate(data, strict=True)
    for choice in completion.choices:
        if choice.index in open_choices:
            choice.finish_reason = None  # type: ignore[assignment]
    return completion


def test_a_completion_streams_and_assembles() -> None:
    text = CompletionAssembler("r1", "m", 1_700_000_000, ["Once"], n=1, logprobs=False, echo=False, include_usage=True)
    assert text.opening() == []  # without echo nothing comes before the first token
    chunks = [sdk(c) for c in [*text.feed(0, TokenDelta(1, " upon", 1)), *text.feed(0, TokenDelta(2, " a", 1))]]
    chunks += [sdk(c) for c in text.feed(0, Finished(3, "length", Usage(2, 2, cached_tokens=1)))]
    assert [(c.id, c.object, c.choices[0].text, c.choices[0].finish_reason) for c in chunks] == [
        ("cmpl-r1", "text_completion", " upon", None),
        ("cmpl-r1", "text_completion", " a", None),
        ("cmpl-r1", "text_completion", "", "length"),
    ]
    usage = sdk(text.usage_chunk()).usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 2, 4)
    whole = sdk(text.completion())
    assert [(c.index, c.text, c.finish_reason, c.logprobs) for c in whole.choices] == [(0, " upon a", "length", None)]


def test_list_prompts_with_n_choices_index_p_times_n_plus_i_and_echo() -> None:
    text = CompletionAssembler("r", "m", 1, ["A", "B"], n=2, logprobs=False, echo=True, include_usage=False)
    opening = [sdk(c) for c in text.opening()]
    assert [(c.choices[0].index, c.choices[0].text) for c in opening] == [(0, "A"), (1, "A"), (2, "B"), (3, "B")]
    fed = text.feed(1, TokenDelta(1, "b", 1, index=1))  # prompt 1, choice 1
    assert sdk(fed[0]).choices[0].index == 3
    for prompt in (0, 1):
        for choice in (0, 1):
            text.feed(prompt, Finished(9, "stop", Usage(prompt_tokens=5 + prompt, completion_tokens=1), index=choice))
    whole = sdk(text.completion())
    assert [c.text for c in whole.choices] == ["A", "A", "B", "Bb"]
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (11, 4)  # each prompt once: 5 + 6


def test_logprobs_with_text_offsets() -> None:
    text = CompletionAssembler("r", "m", 1, ["Hi"], n=1, logprobs=True, echo=True, include_usage=False)
    items = (TokenLogprob(b" th", -0.5, ((b" th", -0.5), (b" x", -2.0))), TokenLogprob(b"ere", -0.25, ()))
    (chunk,) = text.feed(0, TokenDelta(1, " there", 2, logprobs=items))
    part = sdk(chunk).choices[0].logprobs
    assert part is not None
    assert (part.tokens, part.token_logprobs, part.text_offset) == ([" th", "ere"], [-0.5, -0.25], [2, 5])
    assert part.top_logprobs == [{" th": -0.5, " x": -2.0}, {}]
    text.feed(0, Finished(2, "stop", Usage(2, 2)))
    whole = sdk(text.completion()).choices[0]
    assert whole.text == "Hi there" and whole.logprobs is not None and whole.logprobs.text_offset == [2, 5]
