"""Token logprobs in the shape both APIs share: each token's text, log-probability and UTF-8 bytes, with its
likeliest alternatives in the same shape."""

from __future__ import annotations

from herd.inference import TokenLogprob

Row = tuple[str, float, list[int]]  # token text, logprob, bytes


def _row(piece: bytes, logprob: float) -> Row:
    return piece.decode("utf-8", "replace"), logprob, list(piece)


def rows(items: tuple[TokenLogprob, ...]) -> list[tuple[Row, list[Row]]]:
    return [(_row(item.piece, item.logprob), [_row(piece, lp) for piece, lp in item.top]) for item in items]
