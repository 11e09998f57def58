"""Generated text -> content and tool calls, incrementally: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

The tool grammar (api/grammar.py) guarantees the shape once a call has begun, so the parser streams the arguments
object as it is generated and ends it when its braces balance. Pure: no I/O, fed one text delta at a time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from herd.api.grammar import TOOL_CLOSE, TOOL_OPEN

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_HEAD_GIVE_UP = 512  # this much text after <tool_call> without a call head: it was not a call after all


@dataclass(frozen=True, slots=True)
class Content:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True, slots=True)
class CallArguments:
    index: int
    fragment: str


@dataclass(frozen=True, slots=True)
class CallEnd:
    index: int
    name: str
    arguments: str  # the whole JSON text


Piece = Content | CallStart | CallArguments | CallEnd


@dataclass(slots=True)
class ToolCallParser:
    """Feed text deltas; get content and tool-call pieces back in order."""

    calls: int = 0
    _state: str = "content"  # content | head | arguments | tail
    _buf: str = ""
    _name: str = ""
    _args: list[str] = field(default_factory=list)
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
        while self._buf:
            before = (self._state, len(self._buf))
            getattr(self, f"_{self._state}")(out)
            if (self._state, len(self._buf)) == before:
                break  # needs more text
        return out

    def finish(self) -> list[Piece]:
        """The end of generation: whatever is still held back is content (an unfinished call stays content)."""
        out: list[Piece] = []
        if self._state == "content" and self._buf:
            if not (self.calls and not self._buf.strip()):
                out.append(Content(self._buf))
        elif self._state == "head":
            out.append(Content(TOOL_OPEN + self._buf))
        self._buf = ""
        return out

    def _content(self, out: list[Piece]) -> None:
        at = self._buf.find(TOOL_OPEN)
        if at >= 0:
            self._emit_content(self._buf[:at], out)
            self._buf = self._buf[at + len(TOOL_OPEN) :]
            self._state = "head"
            return
        # Hold back a tail that could be the start of <tool_call>.
        longest = min(len(TOOL_OPEN) - 1, len(self._buf))
        keep = next((k for k in range(longest, 0, -1) if TOOL_OPEN.startswith(self._buf[-k:])), 0)
        text = self._buf[: len(self._buf) - keep]
        if text:
            self._emit_content(text, out)
            self._buf = self._buf[len(text) :]

    def _emit_content(self, text: str, out: list[Piece]) -> None:
        if text and not (self.calls and not text.strip()):  # whitespace between calls is not content
            out.append(Content(text))

    def _head(self, out: list[Piece]) -> None:
        match = _HEAD.match(self._buf)
        if match is None:
            if len(self._buf) > _HEAD_GIVE_UP:
                out.append(Content(TOOL_OPEN + self._buf))
                self._buf, self._state = "", "content"
            return
        self._name = json.loads(f'"{match.group(1)}"')
        self._buf = self._buf[match.end() :]
        self._args, self._depth, self._in_string, self._escaped = [], 0, False, False
        out.append(CallStart(self.calls, self._name))
        self._state = "arguments"

    def _arguments(self, out: list[Piece]) -> None:
        end = -1
        for i, ch in enumerate(self._buf):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    end = i + 1
                    break
        fragment = self._buf if end < 0 else self._buf[:end]
        if not self._args:
            fragment = fragment.lstrip()  # whitespace before the object opens
        if fragment:
            self._args.append(fragment)
            out.append(CallArguments(self.calls, fragment))
        self._buf = "" if end < 0 else self._buf[end:]
        if end >= 0:
            out.append(CallEnd(self.calls, self._name, "".join(self._args)))
            self.calls += 1
            self._state = "tail"

    def _tail(self, out: list[Piece]) -> None:
        at = self._buf.find(TOOL_CLOSE)
        if at >= 0:
            self._buf = self._buf[at + len(TOOL_CLOSE) :]
            self._state = "content"
        elif len(self._buf) > len(TOOL_CLOSE) + 64:
            self._buf = ""  # the grammar closes every call; without one, drop what trails the arguments


def parse_all(text: str) -> tuple[str, list[CallEnd]]:
    """Content and complete tool calls of a whole generation."""
    parser = ToolCallParser()
    pieces = [*parser.feed(text), *parser.finish()]
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    return content, [p for p in pieces if isinstance(p, CallEnd)]
