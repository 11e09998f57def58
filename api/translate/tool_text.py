"""Tool-call scanners for the families whose arguments are not JSON: Gemma 4's `<|tool_call>call:f{...}<tool_call|>`
and LFM2's Python call lists. A call is read whole once its end marker comes, then sent as JSON arguments."""

from __future__ import annotations

from dataclasses import dataclass

from herd.api.translate.tool_json import GIVE_UP, CallArguments, Content, Piece, Scanner
from herd.toolsyntax import GEMMA_CALL, GEMMA_CALL_END, LFM_CALL, LFM_CALL_END, parse_gemma_call, parse_python_calls


@dataclass(slots=True)
class Marked(Scanner):
    """Calls between an opener and an end marker (held until the end marker), or the text as it was."""

    openers: tuple[str, ...] = (GEMMA_CALL,)
    closer: str = GEMMA_CALL_END

    def _head(self, out: list[Piece]) -> None:
        at = self._buf.find(self.closer)
        if at < 0:
            if len(self._buf) > 64 * GIVE_UP:
                self._give_up(out)
            return
        end = at + len(self.closer)
        calls = self._read(self._buf[:at])
        if calls is None:  # not a call after all: the text stays as it was
            out.append(Content(self._opener + self._buf[:end]))
            self._buf, self._state = self._buf[end:], "content"
            return
        for name, arguments in calls:
            self._start(name, out)
            self._args = [arguments]
            out.append(CallArguments(self.calls, arguments))
            self._end(out)
        self._buf, self._state = self._buf[end:], "content"

    def _read(self, text: str) -> list[tuple[str, str]] | None:
        found = parse_gemma_call(text)
        return None if found is None else [found]


@dataclass(slots=True)
class PythonCalls(Marked):
    """`<|tool_call_start|>[f(a='x', b=1), g()]<|tool_call_end|>` (LiquidAI LFM2, LFM2.5)."""

    openers: tuple[str, ...] = (LFM_CALL,)
    closer: str = LFM_CALL_END

    def _read(self, text: str) -> list[tuple[str, str]] | None:
        return parse_python_calls(text)
