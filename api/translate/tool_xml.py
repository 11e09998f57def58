"""Tool-call scanners for the families that write a call's parameters as XML-like elements: Qwen3-Coder's and
Seed-OSS's <parameter=k>, GLM's <arg_key>/<arg_value>, MiniMax M2's and DeepSeek V3.2/V4's <invoke>/<parameter>.
A value is typed by the tool's schema (herd.toolparams.typed: `2` is 2 for an integer parameter, "2" for a string
one); without a schema, text that reads as a JSON number, boolean, null, object or array is that value (unless the
element says `string="true"`). Arguments go out one parameter at a time."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from herd.api.translate.tool_json import GIVE_UP, CallArguments, Piece, Scanner
from herd.toolparams import Signature, typed


@dataclass(slots=True)
class Typed(Scanner):
    """A scanner whose values are typed by the offered tools' schemas (name -> its parameters' types)."""

    signatures: Mapping[str, Signature] = field(default_factory=dict)
    _key: str = ""

    def _typed(self, text: str) -> Any:
        return typed(text, self.signatures.get(self._name, {}).get(self._key))


@dataclass(slots=True)
class Xml(Typed):
    """`<tool_call><function=f><parameter=k>value</parameter>...</function></tool_call>` (Qwen3-Coder, Qwen 3.5;
    Seed-OSS in <seed:tool_call> tags)."""

    closer: str = "</tool_call>"

    def _head(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if not text.startswith("<function="[: len(text)]) and text:
            self._give_up(out)
            return
        end = text.find(">")
        if end < 0:
            if len(text) > GIVE_UP:
                self._give_up(out)
            return
        self._start(text[len("<function=") : end].strip(), out)
        self._buf = text[end + 1 :]
        self._state = "parameters"

    def _parameters(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        for tag, state in (("<parameter=", "parameter"), ("</function>", "close")):
            if text.startswith(tag):
                self._buf, self._state = text, state
                return
        if text and not any(tag.startswith(text) for tag in ("<parameter=", "</function>")):
            self._buf, self._state = text, "close"  # not a parameter: the function ends here

    def _parameter(self, out: list[Piece]) -> None:
        end = self._buf.find(">")
        if end >= 0:
            self._key = self._buf[len("<parameter=") : end].strip()
            self._buf, self._state = self._buf[end + 1 :], "value"

    def _value(self, out: list[Piece]) -> None:
        at = self._buf.find("</parameter>")
        if at < 0:
            return
        value = self._buf[:at].removeprefix("\n").removesuffix("\n")
        self._buf = self._buf[at + len("</parameter>") :]
        fragment = ("{" if not self._args else ", ") + json.dumps(self._key) + ": " + json.dumps(self._typed(value))
        self._args.append(fragment)
        out.append(CallArguments(self.calls, fragment))
        self._state = "parameters"

    def _close(self, out: list[Piece]) -> None:
        fragment = "}" if self._args else "{}"
        self._args.append(fragment)
        out.append(CallArguments(self.calls, fragment))
        self._end(out)
        self._buf = self._buf.removeprefix("</function>")
        self._state = "tail"

    def _tail(self, out: list[Piece]) -> None:
        at = self._buf.find(self.closer)
        if at >= 0:
            self._buf, self._state = self._buf[at + len(self.closer) :], "content"
        elif len(self._buf) > len(self.closer) + 64:
            self._buf, self._state = "", "content"


@dataclass(slots=True)
class Glm(Typed):
    """`<tool_call>f<arg_key>k</arg_key><arg_value>v</arg_value>...</tool_call>` (GLM 4.5 - 4.7, Ling, Laguna)."""

    def _head(self, out: list[Piece]) -> None:
        ends = [(at, m) for m in ("<arg_key>", "</tool_call>") if (at := self._buf.find(m)) >= 0]
        if not ends:
            if len(self._buf) > GIVE_UP or "{" in self._buf:  # JSON after the tag: another family's call
                self._give_up(out)
            return
        at, _ = min(ends)
        name = self._buf[:at].strip()
        if not name or any(c in name for c in '{}<>"\n'):
            self._give_up(out)
            return
        self._start(name, out)
        self._buf, self._state = self._buf[at:], "pairs"

    def _pairs(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text.startswith("</tool_call>"):
            fragment = "}" if self._args else "{}"
            self._args.append(fragment)
            out.append(CallArguments(self.calls, fragment))
            self._end(out)
            self._buf, self._state = text[len("</tool_call>") :], "content"
            return
        key_end = text.find("</arg_key>")
        value_end = text.find("</arg_value>")
        if not any(text.startswith(tag[: len(text)]) for tag in ("<arg_key>", "</tool_call>")):
            self._buf, self._state = "", "content"  # not GLM's shape after all: what is left of the call is dropped
            return
        if key_end < 0 or value_end < 0:
            return
        self._key = key = text[len("<arg_key>") : key_end].strip()
        value = text[key_end + len("</arg_key>") : value_end].strip()
        value = value.removeprefix("<arg_value>")
        fragment = ("{" if not self._args else ", ") + json.dumps(key) + ": " + json.dumps(self._typed(value))
        self._args.append(fragment)
        out.append(CallArguments(self.calls, fragment))
        self._buf = text[value_end + len("</arg_value>") :]


@dataclass(slots=True)
class Invoke(Typed):
    """`<P{wrapper}>` then per call `<Pinvoke name="f">` and `<Pparameter name="k"[ string="true"]>v</Pparameter>`
    elements, `</Pinvoke>`, and `</P{wrapper}>` (P: no prefix for MiniMax M2, DeepSeek's DSML bars for V3.2/V4)."""

    prefix: str = ""
    closer: str = "</minimax:tool_call>"
    _as_text: bool | None = None

    def _head(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        start = f'<{self.prefix}invoke name="'
        if text.startswith(self.closer):
            self._buf, self._state = text[len(self.closer) :], "content"
            return
        if text and not any(text.startswith(tag[: len(text)]) for tag in (start, self.closer)):
            self._give_up(out)
            return
        end = text.find('">', len(start))
        if not text.startswith(start) or end < 0:
            if len(text) > GIVE_UP:
                self._give_up(out)
            return
        self._start(text[len(start) : end], out)
        self._buf, self._state = text[end + 2 :], "parameters"

    def _parameters(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        start, end = f'<{self.prefix}parameter name="', f"</{self.prefix}invoke>"
        if text.startswith(end):
            fragment = "}" if self._args else "{}"
            self._args.append(fragment)
            out.append(CallArguments(self.calls, fragment))
            self._end(out)
            self._buf, self._state, self._opener = text[len(end) :], "head", ""
            return
        if not text.startswith(start):
            if text and not any(tag.startswith(text[: len(tag)]) for tag in (start, end)):
                self._buf, self._state = "", "content"  # not this shape after all: the rest of the call is dropped
            return
        close = text.find(">")
        if close < 0:
            return
        header = text[len(start) : close]
        self._key = header.split('"', 1)[0]
        self._as_text = True if 'string="true"' in header else False if 'string="false"' in header else None
        self._buf, self._state = text[close + 1 :], "value"

    def _value(self, out: list[Piece]) -> None:
        end = f"</{self.prefix}parameter>"
        at = self._buf.find(end)
        if at < 0:
            return
        raw = self._buf[:at]
        self._buf = self._buf[at + len(end) :]
        value: Any = raw if self._as_text else self._typed(raw)
        fragment = ("{" if not self._args else ", ") + json.dumps(self._key) + ": " + json.dumps(value)
        self._args.append(fragment)
        out.append(CallArguments(self.calls, fragment))
        self._state = "parameters"
