"""Tool-call scanners for the families that mark a call's parts with tags: Mistral's [ARGS], gpt-oss's harmony
channels, Kimi K2's and DeepSeek's call tokens, Functionary's recipients (XML-like parameters: tool_xml.py)."""

from __future__ import annotations

from dataclasses import dataclass

from herd.api.translate.tool_json import GIVE_UP, CallArguments, Content, Piece, Reasoning, Scanner, held_back
from herd.toolformat import DS_CALL, DS_CALL_END, DS_CALLS, DS_CALLS_END, DS_SEP


@dataclass(slots=True)
class MistralArgs(Scanner):
    """`[TOOL_CALLS]f[ARGS]{...}`, with `[CALL_ID]id` before `[ARGS]` in some (Mistral Small 3.2, Devstral)."""

    openers: tuple[str, ...] = ("[TOOL_CALLS]",)

    def _head(self, out: list[Piece]) -> None:
        ends = [(at, m) for m in ("[ARGS]", "[CALL_ID]") if (at := self._buf.find(m)) >= 0]
        if not ends:
            if len(self._buf) > GIVE_UP:
                self._give_up(out)
            return
        at, marker = min(ends)
        self._start(self._buf[:at].strip(), out)
        self._buf = self._buf[at + len(marker) :]
        self._state = "call_id" if marker == "[CALL_ID]" else "arguments"

    def _call_id(self, out: list[Piece]) -> None:
        at = self._buf.find("[ARGS]")
        if at >= 0:
            self._buf, self._state = self._buf[at + len("[ARGS]") :], "arguments"

    def _after_arguments(self) -> str:
        return "content"


# Harmony (gpt-oss): every message is `<|channel|>NAME[ to=RECIPIENT][ <|constrain|>json]<|message|>BODY` ended by
# <|end|> (then `<|start|>assistant` and the next message), <|call|> or <|return|> (both end generation, so they
# never reach the text). Calls go to the commentary channel with a `to=functions.NAME` recipient (also written
# before the channel); `final` is the answer; `analysis` is reasoning (Reasoning pieces), which is not content.
_ENDS = ("<|end|>", "<|call|>", "<|return|>", "<|start|>")
_RECIPIENT = "to=functions."


@dataclass(slots=True)
class Harmony(Scanner):
    openers: tuple[str, ...] = ()
    _state: str = "header"

    def _header(self, out: list[Piece]) -> None:
        at = self._buf.find("<|message|>")
        if at < 0:
            if len(self._buf) > GIVE_UP or (self._buf and not self._could_be_header(self._buf)):
                self._state = "plain"  # no harmony messages (its markers were not shown): all of it is content
            return
        header, self._buf = self._buf[:at], self._buf[at + len("<|message|>") :]
        if _RECIPIENT in header:
            name = header.split(_RECIPIENT, 1)[1]
            name = name.replace("<|", " ").split()[0] if name.strip() else ""
            self._start(name, out)
            self._state = "call_body"
        else:
            self._state = "reasoning_body" if "analysis" in header else "content_body"

    @staticmethod
    def _could_be_header(text: str) -> bool:
        text = text.lstrip()
        return any(text.startswith(p) or p.startswith(text) for p in ("<|", "to=", "assistant"))

    def _plain(self, out: list[Piece]) -> None:
        out.append(Content(self._buf))
        self._buf = ""

    def _body(self) -> tuple[str, bool]:
        """The body text that can go out now, and whether the body ended (its end marker is consumed)."""
        found = [(at, m) for m in _ENDS if (at := self._buf.find(m)) >= 0]
        if found:
            at, marker = min(found)
            text = self._buf[:at]
            self._buf = self._buf[at + (0 if marker == "<|start|>" else len(marker)) :]
            return text, True
        keep = held_back(self._buf, _ENDS)
        text = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(text) :]
        return text, False

    def _content_body(self, out: list[Piece]) -> None:
        text, ended = self._body()
        if text:
            out.append(Content(text))
        if ended:
            self._state = "header"

    def _reasoning_body(self, out: list[Piece]) -> None:
        text, ended = self._body()
        if text:
            out.append(Reasoning(text))
        if ended:
            self._state = "header"

    def _call_body(self, out: list[Piece]) -> None:
        text, ended = self._body()
        if not self._args:
            text = text.lstrip()
        if text:
            self._args.append(text)
            out.append(CallArguments(self.calls, text))
        if ended:
            self._end(out, "".join(self._args).rstrip())
            self._state = "header"

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        loose = self._state in ("header", "plain") and "<|" not in self._buf  # text that was never a message
        if (loose or self._state == "content_body") and self._buf.strip():
            out.append(Content(self._buf))
        elif self._state == "reasoning_body" and self._buf:  # generation ended while it reasoned
            out.append(Reasoning(self._buf))
        elif self._state == "call_body":  # <|call|> ended generation: the call is complete
            if self._buf:
                self._args.append(self._buf)
                out.append(CallArguments(self.calls, self._buf))
            self._end(out, "".join(self._args).rstrip())
        self._buf = ""
        return out


_KIMI_CALL, _KIMI_ARGS, _KIMI_END = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


@dataclass(slots=True)
class Kimi(Scanner):
    """`<|tool_calls_section_begin|>` then per call `<|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{...}
    <|tool_call_end|>`, then `<|tool_calls_section_end|>` (Kimi K2)."""

    openers: tuple[str, ...] = ("<|tool_calls_section_begin|>",)

    def _head(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text.startswith("<|tool_calls_section_end|>"):
            self._buf, self._state = text[len("<|tool_calls_section_end|>") :], "content"
            return
        if text and not any(text.startswith(tag[: len(text)]) for tag in (_KIMI_CALL, "<|tool_calls_section_end|>")):
            self._give_up(out)
            return
        at = text.find(_KIMI_ARGS)
        if at < 0:
            if len(text) > GIVE_UP:
                self._give_up(out)
            return
        ident = text[len(_KIMI_CALL) : at].strip().removeprefix("functions.")
        self._start(ident.rsplit(":", 1)[0] if ":" in ident else ident, out)
        self._buf, self._state = text[at + len(_KIMI_ARGS) :], "arguments"

    def _after_arguments(self) -> str:
        return "call_end"

    def _call_end(self, out: list[Piece]) -> None:
        at = self._buf.find(_KIMI_END)
        if at >= 0:
            self._buf, self._state = self._buf[at + len(_KIMI_END) :], "head"
            self._opener = ""  # a later give-up keeps only its own text


@dataclass(slots=True)
class FunctionaryV31(Scanner):
    """`<function=f>{...}</function>` (Functionary 3.1)."""

    openers: tuple[str, ...] = ("<function=",)

    def _head(self, out: list[Piece]) -> None:
        end = self._buf.find(">")
        name = self._buf if end < 0 else self._buf[:end]
        if any(c in name for c in ' {<"\n') or len(name) > 128:
            self._give_up(out)
            return
        if end < 0:
            return
        self._start(self._buf[:end], out)
        self._buf, self._state = self._buf[end + 1 :], "arguments"

    def _after_arguments(self) -> str:
        return "tail"

    def _tail(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text.startswith("</function>"):
            self._buf, self._state = text[len("</function>") :], "content"
        elif text and not "</function>".startswith(text):
            self._buf, self._state = text, "content"


@dataclass(slots=True)
class FunctionaryV32(Scanner):
    """Functionary 3.2: the prompt ends in `>>>`, so the answer opens with its recipient and a newline: `all` then
    text, or a function's name then its JSON arguments; a later `>>>` opens the next part."""

    openers: tuple[str, ...] = (">>>",)
    _state: str = "recipient"

    def _recipient(self, out: list[Piece]) -> None:
        end = self._buf.find("\n")
        line = self._buf if end < 0 else self._buf[:end]
        if any(c in line for c in ' {}<>"') or len(line) > 128:
            self._state = "content"  # no recipient: the answer is plain text
            return
        if end < 0:
            return
        self._buf = self._buf[end + 1 :]
        if line.strip() == "all":
            self._state = "content"
        else:
            self._start(line.strip(), out)
            self._state = "arguments"

    def _open(self, opener: str, out: list[Piece]) -> None:
        self._buf, self._state = self._buf[len(opener) :], "recipient"

    def _after_arguments(self) -> str:
        return "content"


@dataclass(slots=True)
class DeepSeek(Scanner):
    """(calls begin) then per call (call begin)`function`(sep)`f` and fenced JSON (R1), or (call begin)`f`(sep)JSON
    (V3.1), then (call end); (calls end) closes them. The markers are DeepSeek's full-width tokens."""

    openers: tuple[str, ...] = (DS_CALLS,)

    def _head(self, out: list[Piece]) -> None:
        text = self._buf.lstrip()
        if text.startswith(DS_CALLS_END):
            self._buf, self._state = text[len(DS_CALLS_END) :], "content"
            return
        if text and not any(text.startswith(tag[: len(text)]) for tag in (DS_CALL, DS_CALLS_END)):
            self._give_up(out)
            return
        at = text.find(DS_SEP)
        if at < 0:
            if len(text) > GIVE_UP:
                self._give_up(out)
            return
        name = text[len(DS_CALL) : at].strip()
        rest = text[at + len(DS_SEP) :]
        if name == "function":  # R1: the name on its own line, then the arguments fenced as JSON
            fence = rest.find("```json")
            if fence < 0:
                if len(rest) > GIVE_UP:
                    self._give_up(out)
                return
            name, rest = rest[:fence].strip(), rest[fence + len("```json") :]
        self._start(name, out)
        self._buf, self._state = rest, "arguments"

    def _after_arguments(self) -> str:
        return "call_end"

    def _call_end(self, out: list[Piece]) -> None:
        at = self._buf.find(DS_CALL_END)
        if at >= 0:
            self._buf, self._state, self._opener = self._buf[at + len(DS_CALL_END) :], "head", ""
