"""workers/textstream.py as a unit: incremental UTF-8 and stop strings that span tokens."""

from __future__ import annotations

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
