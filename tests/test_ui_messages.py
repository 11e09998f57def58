"""UIStream (api/translate/ui_messages.py) in process: reasoning, then the answer, as UI chunks, however split."""

from __future__ import annotations

import msgspec
import pytest
from herd.api.translate.ui_messages import UIStream
from herd.api.wire import ui as wire
from herd.inference import Finished, TokenDelta, Usage

TEXT = "<think>\nThe user greets me. </think>\n\nHello there!"


def _chunks(pieces: list[str], reasoning: str | None = "think") -> list[dict[str, object]]:
    answer = UIStream("msg-1", "m", tools=False)
    out = answer.opening()
    for seq, piece in enumerate(pieces):
        out += answer.feed(TokenDelta(seq, piece, 1, reasoning=reasoning if seq == 0 else None))
    out += answer.finish(Finished(len(pieces), "stop", Usage(5, len(pieces))))
    return [msgspec.to_builtins(c) for c in out]


@pytest.mark.parametrize("size", [1, 3, len(TEXT)])
def test_reasoning_block_closes_before_the_answer_opens(size: int) -> None:
    chunks = _chunks([TEXT[i : i + size] for i in range(0, len(TEXT), size)])
    kinds = [c["type"] for c in chunks if not str(c["type"]).endswith("delta")]
    assert kinds == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-end",
        "text-start",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert chunks[2] == {"type": "reasoning-start", "id": "reasoning-1"}
    reasoning = "".join(str(c["delta"]) for c in chunks if c["type"] == "reasoning-delta")
    text = "".join(str(c["delta"]) for c in chunks if c["type"] == "text-delta")
    assert (reasoning, text) == ("The user greets me.", "Hello there!")
    assert {c["id"] for c in chunks if str(c["type"]).startswith("text-")} == {"text-1"}


def test_a_model_that_does_not_reason_gives_text_only() -> None:
    chunks = _chunks(["<think>x</think> y"], reasoning=None)
    assert not [c for c in chunks if str(c["type"]).startswith("reasoning")]
    assert "".join(str(c["delta"]) for c in chunks if c["type"] == "text-delta") == "<think>x</think> y"


def test_a_failure_mid_reasoning_closes_its_block() -> None:
    answer = UIStream("msg-1", "m", tools=False)
    answer.feed(TokenDelta(0, "<think>hmm", 1, reasoning="think"))
    assert answer.failed("boom") == [wire.ReasoningEnd("reasoning-1"), wire.Error("boom"), wire.Finish("error")]
