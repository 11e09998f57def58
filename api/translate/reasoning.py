"""Generated text -> reasoning, answer and tool-call pieces, incrementally (whatever the split of the deltas).

The worker names on a choice's first delta how its model reasons (`TokenDelta.reasoning`, herd.reasoning): "think"
(a `<think>...</think>` block may open the answer), "thinking" (the prompt opened `<think>`, so the text starts
inside it), the same for Command-R's, Seed's and Gemma 4's blocks ("seed", "seed-thinking", ...), or "harmony"
(gpt-oss: the analysis channel is reasoning; its scanner in tool_tagged.py splits it). The answer's text then goes
through the tool-call parser when the request offered tools.
"""

from __future__ import annotations

from collections.abc import Mapping

from herd.api.translate.tool_json import Content, Piece, Reasoning, held_back
from herd.api.translate.tools import ToolCallParser
from herd.inference import TokenDelta
from herd.reasoning import THINK_CLOSE, THINK_OPEN, block
from herd.toolparams import Signature

__all__ = ["OutputParser", "Reasoning", "ThinkSplitter"]


class ThinkSplitter:
    """`<think>reasoning</think>answer`: the block counts only at the start of the text (after whitespace); the
    whitespace around the reasoning and between it and the answer is dropped, as reasoning parsers do."""

    __slots__ = ("_buf", "_close", "_open", "_pending", "_said", "_state")

    def __init__(self, inside: bool = False, markers: tuple[str, str] = (THINK_OPEN, THINK_CLOSE)) -> None:
        self._open, self._close = markers
        self._state = "reasoning" if inside else "start"
        self._buf = ""
        self._pending = ""  # reasoning's trailing whitespace: sent once more reasoning follows it
        self._said = False  # some reasoning went out (its leading whitespace is dropped)

    def feed(self, text: str) -> list[Content | Reasoning]:
        self._buf += text
        out: list[Content | Reasoning] = []
        while self._buf:
            before = (self._state, len(self._buf))
            getattr(self, f"_{self._state}")(out)
            if (self._state, len(self._buf)) == before:
                break
        return out

    def _start(self, out: list[Content | Reasoning]) -> None:
        text = self._buf.lstrip()
        if text.startswith(self._open):
            self._buf, self._state = text[len(self._open) :], "reasoning"
        elif text and not self._open.startswith(text):
            self._state = "content"

    def _reasoning(self, out: list[Content | Reasoning]) -> None:
        at = self._buf.find(self._close)
        if at >= 0:
            self._say(self._buf[:at].rstrip(), out)
            self._buf, self._state, self._pending = self._buf[at + len(self._close) :], "after", ""
            return
        keep = held_back(self._buf, (self._close,))
        text = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(text) :]
        body = text.rstrip()
        self._say(body, out)
        self._pending += text[len(body) :]

    def _say(self, text: str, out: list[Content | Reasoning]) -> None:
        if not self._said:  # the reasoning's leading whitespace (held as pending, too) is dropped
            text, self._pending = text.lstrip(), ""
        if text:
            out.append(Reasoning(self._pending + text))
            self._pending, self._said = "", True

    def _after(self, out: list[Content | Reasoning]) -> None:
        self._buf = self._buf.lstrip()
        if self._buf:
            self._state = "content"

    def _content(self, out: list[Content | Reasoning]) -> None:
        out.append(Content(self._buf))
        self._buf = ""

    def finish(self) -> list[Content | Reasoning]:
        """The end of generation: a `<think>` never closed is all reasoning; text held back goes out."""
        out: list[Content | Reasoning] = []
        if self._state == "reasoning":
            self._say(self._buf.rstrip(), out)
        elif self._state in ("start", "content") and self._buf:
            out.append(Content(self._buf))
        self._buf = ""
        return out


class OutputParser:
    """Feed a choice's deltas; get its reasoning, content and tool-call pieces in order. `tools`: the request
    offered tools (their calls are parsed out of the answer); `reasoning`: keep the reasoning (else it is dropped,
    as for Ollama's think=false); `signatures`: the offered tools' parameter types (herd.toolparams), which type
    the values of calls whose arguments are not JSON. `reasoning_tokens` counts the tokens of deltas that were
    reasoning only."""

    __slots__ = ("_keep", "_last", "_signatures", "_think", "_tools", "_wants_tools", "reasoning_tokens")

    def __init__(self, tools: bool, reasoning: bool = True, signatures: Mapping[str, Signature] | None = None) -> None:
        self._wants_tools = tools
        self._signatures = signatures
        self._tools: ToolCallParser | None = None
        self._think: ThinkSplitter | None = None
        self._keep = reasoning
        self._last: type | None = None  # the kind of the last piece out
        self.reasoning_tokens = 0

    def feed(self, event: TokenDelta) -> list[Piece]:
        if event.reasoning is not None or event.tool_format is not None:
            self._configure(event.tool_format, event.reasoning)
        elif self._wants_tools and self._tools is None:
            self._tools = ToolCallParser(signatures=self._signatures)
        pieces = self._answer(self._think.feed(event.text) if self._think is not None else [Content(event.text)])
        kinds = {type(p) for p in pieces}
        if kinds == {Reasoning} or (not kinds and self._last is Reasoning):
            self.reasoning_tokens += event.tokens
        if pieces:
            self._last = type(pieces[-1])
        return self._kept(pieces)

    def _configure(self, tool_format: str | None, reasoning: str | None) -> None:
        if self._tools is not None or self._think is not None:
            return
        if reasoning == "harmony":  # its scanner tells the channels apart, calls or not
            self._tools = ToolCallParser(tool_format or "gpt-oss", self._signatures)
            return
        found = block(reasoning) if reasoning is not None else None
        if found is not None:
            self._think = ThinkSplitter(inside=found[1], markers=found[0])
        if self._wants_tools:
            self._tools = ToolCallParser(tool_format or "hermes", self._signatures)

    def _answer(self, pieces: list[Content | Reasoning]) -> list[Piece]:
        """The answer's text through the tool-call parser (when there is one); reasoning as it is."""
        out: list[Piece] = []
        for piece in pieces:
            if isinstance(piece, Content) and self._tools is not None:
                out.extend(self._tools.feed(piece.text))
            elif piece.text:
                out.append(piece)
        return out

    def _kept(self, pieces: list[Piece]) -> list[Piece]:
        return pieces if self._keep else [p for p in pieces if not isinstance(p, Reasoning)]

    def finish(self) -> list[Piece]:
        pieces = self._answer(self._think.finish()) if self._think is not None else []
        if self._tools is not None:
            pieces.extend(self._tools.finish())
        return self._kept(pieces)
