"""Tool-call scanners: the pieces they produce, the base scanner, and the families whose calls are JSON objects.

A scanner is fed one text delta at a time and streams a call's arguments as they come: the concatenated
`CallArguments` fragments of a call are its `CallEnd` arguments, JSON text. Text that opened like a call but never
became one stays content. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_HEAD = re.compile(
    r'\s*\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)
GIVE_UP = 512  # this much text after an opener without a call's head: it was not a call after all


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


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Text the model reasoned in before its answer (api/translate/reasoning.py, harmony's analysis channel)."""

    text: str


Piece = Content | Reasoning | CallStart | CallArguments | CallEnd


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`."""
    longest = min(max(len(m) for m in markers) - 1, len(text))
    return next((k for k in range(longest, 0, -1) if any(m.startswith(text[-k:]) for m in markers)), 0)


@dataclass(slots=True)
class Scanner:
    """Content until an opener; then the family's call states (methods named `_<state>`), back to content."""

    openers: tuple[str, ...] = (TOOL_OPEN,)
    calls: int = 0
    _state: str = "content"
    _buf: str = ""
    _opener: str = ""
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
        """The end of generation: whatever is held back is content; an unfinished call is dropped."""
        out: list[Piece] = []
        if self._state == "content":
            self._emit_content(self._buf, out)
        elif self._state == "head":
            out.append(Content(self._opener + self._buf))
        else:
            self._finish_call(out)
        self._buf = ""
        return out

    def _finish_call(self, out: list[Piece]) -> None:
        """A call still open when generation ended (most families' calls end in a marker: those are dropped)."""

    def _emit_content(self, text: str, out: list[Piece]) -> None:
        if text and not (self.calls and not text.strip(" \t\r\n;,")):  # what separates calls is not content
            out.append(Content(text))

    def _content(self, out: list[Piece]) -> None:
        found = [(at, m) for m in self.openers if (at := self._buf.find(m)) >= 0]
        if found:
            at, opener = min(found)
            self._emit_content(self._buf[:at], out)
            self._buf = self._buf[at:]
            self._open(opener, out)
            return
        keep = held_back(self._buf, self.openers)
        text = self._buf[: len(self._buf) - keep]
        if text:
            self._emit_content(text, out)
            self._buf = self._buf[len(text) :]

    def _open(self, opener: str, out: list[Piece]) -> None:
        """The buffer starts with `opener`: consume it and enter the call states."""
        self._opener = opener
        self._buf = self._buf[len(opener) :]
        self._state = "head"

    def _give_up(self, out: list[Piece]) -> None:
        out.append(Content(self._opener + self._buf))
        self._buf, self._state = "", "content"

    def _start(self, name: str, out: list[Piece]) -> None:
        self._name = name
        self._args, self._depth, self._in_string, self._escaped = [], 0, False, False
        out.append(CallStart(self.calls, name))

    def _end(self, out: list[Piece], arguments: str | None = None) -> None:
        out.append(CallEnd(self.calls, self._name, "".join(self._args) if arguments is None else arguments))
        self.calls += 1

    # ---- a JSON call: {"name": "f", "arguments": {...}} ------------------------------------------------------

    def _head(self, out: list[Piece]) -> None:
        match = _HEAD.match(self._buf)
        if match is None:
            if len(self._buf) > GIVE_UP:
                self._give_up(out)
            return
        self._buf = self._buf[match.end() :]
        self._start(json.loads(f'"{match.group(1)}"'), out)
        self._state = "arguments"

    def _arguments(self, out: list[Piece]) -> None:
        """The arguments value, streamed until its brackets balance."""
        end = self._balanced()
        fragment = self._buf if end < 0 else self._buf[:end]
        if not self._args:
            fragment = fragment.lstrip()  # whitespace before the object opens
        if fragment:
            self._args.append(fragment)
            out.append(CallArguments(self.calls, fragment))
        self._buf = "" if end < 0 else self._buf[end:]
        if end >= 0:
            self._end(out)
            self._state = self._after_arguments()

    def _balanced(self) -> int:
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
                    return i + 1
        return -1

    def _after_arguments(self) -> str:
        return "object_end"

    def _object_end(self, out: list[Piece]) -> None:
        """What follows the arguments in the call's object (an id, say), up to its closing brace."""
        end = self._balanced_close()
        if end < 0:
            if len(self._buf) > GIVE_UP:
                self._buf, self._state = "", "content"
            return
        self._buf = self._buf[end:]
        self._state = self._after_object()

    def _balanced_close(self) -> int:
        in_string = escaped = False
        for i, ch in enumerate(self._buf):
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "}":
                return i + 1
        return -1

    def _after_object(self) -> str:
        return "content"


@dataclass(slots=True)
class Hermes(Scanner):
    """`<tool_call>{"name": "f", "arguments": {...}}</tool_call>`, one block per call."""

    def _after_arguments(self) -> str:
        return "tail"

    def _tail(self, out: list[Piece]) -> None:
        at = self._buf.find(TOOL_CLOSE)
        if at >= 0:
            self._buf = self._buf[at + len(TOOL_CLOSE) :]
            self._state = "content"
        elif len(self._buf) > len(TOOL_CLOSE) + 64:
            self._buf = ""  # the grammar closes every call; without one, drop what trails the arguments


@dataclass(slots=True)
class Llama3(Scanner):
    """`{"name": "f", "parameters": {...}}` as the answer, or after `<|python_tag|>` (Llama 3.1 - 3.3)."""

    openers: tuple[str, ...] = ("<|python_tag|>", '{"name"', '{"type"', '{ "name"')

    def _open(self, opener: str, out: list[Piece]) -> None:
        if opener == "<|python_tag|>":
            Scanner._open(self, opener, out)
        else:  # the opener is the call's own first characters
            self._opener, self._state = "", "head"


@dataclass(slots=True)
class Mistral(Scanner):
    """`[TOOL_CALLS][{"name": "f", "arguments": {...}, "id": "a1b2c3d4e"}, ...]` (Mistral Nemo and v3 models)."""

    openers: tuple[str, ...] = ("[TOOL_CALLS]",)

    def _open(self, opener: str, out: list[Piece]) -> None:
        Scanner._open(self, opener, out)
        self._state = "list_open"

    def _list_open(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text:
            self._buf = text[1:] if text[0] == "[" else text
            self._state = "head"

    def _after_object(self) -> str:
        return "list_next"

    def _list_next(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text:
            self._buf = text[1:] if text[0] in ",]" else text
            self._state = "head" if text[0] == "," else "content"


_COMMAND_R_HEAD = re.compile(
    r'\s*\{\s*(?:"tool_call_id"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*)?"tool_name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"parameters"\s*:\s*'
)
_THINK, _THOUGHT = "<|START_THINKING|>", "<|END_THINKING|>"


@dataclass(slots=True)
class CommandR(Mistral):
    """Command R7B: `<|START_THINKING|>plan<|END_THINKING|>` (not content), then `<|START_ACTION|>[{"tool_call_id":
    "0", "tool_name": "f", "parameters": {...}}, ...]<|END_ACTION|>`, or `<|START_RESPONSE|>text<|END_RESPONSE|>`."""

    openers: tuple[str, ...] = ("<|START_ACTION|>", _THINK, "<|START_RESPONSE|>", "<|END_RESPONSE|>")

    def _open(self, opener: str, out: list[Piece]) -> None:
        self._buf = self._buf[len(opener) :]
        if opener == "<|START_ACTION|>":
            self._opener, self._state = opener, "list_open"
        elif opener == _THINK:
            self._state = "thinking"
        # the response markers only frame the content

    def _thinking(self, out: list[Piece]) -> None:
        at = self._buf.find(_THOUGHT)
        if at >= 0:
            self._buf, self._state = self._buf[at + len(_THOUGHT) :], "content"
        else:
            self._buf = self._buf[len(self._buf) - held_back(self._buf, (_THOUGHT,)) :]

    def _head(self, out: list[Piece]) -> None:
        match = _COMMAND_R_HEAD.match(self._buf)
        if match is None:
            if len(self._buf) > GIVE_UP:
                self._give_up(out)
            return
        self._buf = self._buf[match.end() :]
        self._start(json.loads(f'"{match.group(1)}"'), out)
        self._state = "arguments"

    def _list_next(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text:
            self._buf = text[1:] if text[0] in ",]" else text
            self._state = "head" if text[0] == "," else "action_end"

    def _action_end(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text.startswith("<|END_ACTION|>"):
            self._buf, self._state = text[len("<|END_ACTION|>") :], "content"
        elif text and not "<|END_ACTION|>".startswith(text):
            self._buf, self._state = text, "content"


@dataclass(slots=True)
class JsonList(Mistral):
    """JSON call objects between an opener and a closer, in a list or one per line: Nemotron Nano 2's
    `<TOOLCALL>[...]</TOOLCALL>`, Apriel's `<tool_calls>[...]</tool_calls>`, MiniMax M1's `<tool_calls>` with an
    object per line, FireFunction's ` functools[...]` (no closer)."""

    openers: tuple[str, ...] = ("<TOOLCALL>",)
    closer: str = "</TOOLCALL>"

    def _list_next(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text:
            self._buf = text[1:] if text[0] in ",]" else text
            self._state = "head" if text[0] in ",{" else "list_close"

    def _list_close(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if self.closer and text.startswith(self.closer):
            self._buf, self._state = text[len(self.closer) :], "content"
        elif text and not (self.closer and self.closer.startswith(text)):
            self._buf, self._state = text, "content"
