"""Unit tests of pure pieces: stop-string framing and chat template rendering."""

from __future__ import annotations

import pytest
from herd.errors import InvalidRequest
from herd.inference import ChatMessage
from herd.workers.template import ChatTemplate
from herd.workers.textstream import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> str:
    out = []
    for piece in pieces:
        out.append(stream.feed(piece))
        if stream.stopped:
            return "".join(out)
    return "".join(out) + stream.flush()


def test_stop_string_spanning_tokens_is_cut_and_not_sent() -> None:
    s = TextStream(("STOP",))
    assert feed_all(s, [b"hello S", b"TO", b"P world"]) == "hello "
    assert s.stopped


def test_partial_stop_prefix_is_released_when_it_cannot_match() -> None:
    s = TextStream(("STOP",))
    assert s.feed(b"ST") == ""
    assert s.feed(b"x") == "STx"
    assert not s.stopped


def test_utf8_split_across_tokens() -> None:
    s = TextStream(())
    snowman = "☃".encode()
    assert s.feed(snowman[:1]) == ""
    assert s.feed(snowman[1:]) == "☃"


def test_earliest_stop_wins() -> None:
    s = TextStream(("b", "abc"))
    assert feed_all(s, [b"xabc"]) == "x"  # "abc" starts before "b" does


def test_chatml_fallback_and_developer_role() -> None:
    t = ChatTemplate(None, "", "")
    text = t.render([ChatMessage(role="developer", content="be brief"), ChatMessage(role="user", content="hi")])
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_raise_exception_is_a_400() -> None:
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}", "", "")
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        t.render([ChatMessage(role="user", content="hi")])


def test_template_cannot_reach_python() -> None:
    t = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", "", "")
    with pytest.raises(InvalidRequest):
        t.render([ChatMessage(role="user", content="hi")])
