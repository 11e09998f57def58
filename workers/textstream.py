"""Token bytes to text: incremental UTF-8 decoding and stop strings that may span tokens."""

from __future__ import annotations

import codecs


class TextStream:
    """Turns generated token pieces into text that is safe to send.

    Text that could still become a stop string is held back until it either completes one (then generation
    stops and the stop string is not sent) or can no longer match (then it is released).
    """

    __slots__ = ("_decoder", "_held", "_max_stop", "_stops", "stopped")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be emitted now."""
        text = self._decoder.decode(piece)
        if not self._stops:
            return text
        self._held += text
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = self._pending_prefix_len()
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return out

    def flush(self) -> str:
        """Generation ended for another reason: release whatever is held."""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out

    def _first_stop(self) -> int | None:
        found = [i for i in (self._held.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _pending_prefix_len(self) -> int:
        """Length of the longest tail of the held text that is a proper prefix of some stop string."""
        held = self._held
        for n in range(min(len(held), self._max_stop - 1), 0, -1):
            tail = held[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0
