"""Generated text -> content and tool calls, incrementally, in the syntax of the model's family (herd.toolformat).

The worker names the syntax on a choice's first delta (`TokenDelta.tool_format`); a `ToolCallParser` reads Hermes
`<tool_call>` tags (the fallback) until told otherwise, before it has read anything. The scanners live in
tool_json.py (calls that are JSON objects) and tool_tagged.py (calls whose parts are marked with tags).
"""

from __future__ import annotations

from herd.api.translate.tool_json import (
    CallArguments,
    CallEnd,
    CallStart,
    CommandR,
    Content,
    Hermes,
    JsonList,
    Llama3,
    Mistral,
    Piece,
    Scanner,
)
from herd.api.translate.tool_tagged import (
    DeepSeek,
    FunctionaryV31,
    FunctionaryV32,
    Harmony,
    Kimi,
    MistralArgs,
)
from herd.api.translate.tool_text import Marked, PythonCalls
from herd.api.translate.tool_xml import Glm, Invoke, Xml
from herd.toolformat import INVOKE

__all__ = ["CallArguments", "CallEnd", "CallStart", "Content", "Piece", "ToolCallParser", "parse_all", "scanner"]


def scanner(fmt: str) -> Scanner:
    """A fresh scanner for a herd.toolformat name (Hermes for a name it does not know)."""
    if fmt == "llama3":
        return Llama3()
    if fmt == "nemotron-v2":
        return JsonList()
    if fmt in ("apriel", "minimax-m1"):
        return JsonList(openers=("<tool_calls>",), closer="</tool_calls>")
    if fmt == "firefunction-v2":
        return JsonList(openers=(" functools", "functools["), closer="")
    if fmt == "granite":
        return JsonList(openers=("<|tool_call|>",), closer="")
    if fmt == "gemma4":
        return Marked()
    if fmt == "lfm2":
        return PythonCalls()
    if fmt == "mistral":
        return Mistral()
    if fmt == "mistral-args":
        return MistralArgs()
    if fmt == "gpt-oss":
        return Harmony()
    if fmt == "qwen3-coder":
        return Xml()
    if fmt in INVOKE:
        prefix, wrapper = INVOKE[fmt]
        return Invoke(openers=(f"<{prefix}{wrapper}>",), prefix=prefix, closer=f"</{prefix}{wrapper}>")
    if fmt == "glm":
        return Glm()
    if fmt == "kimi-k2":
        return Kimi()
    if fmt in ("deepseek-r1", "deepseek-v3"):
        return DeepSeek()
    if fmt == "command-r":
        return CommandR()
    if fmt == "functionary-v3.1":
        return FunctionaryV31()
    if fmt == "functionary-v3.2":
        return FunctionaryV32()
    if fmt == "seed-oss":
        return Xml(openers=("<seed:tool_call>",), closer="</seed:tool_call>")
    return Hermes()


class ToolCallParser:
    """Feed text deltas; get content and tool-call pieces back in order."""

    __slots__ = ("_fed", "_scanner")

    def __init__(self, fmt: str = "hermes") -> None:
        self._scanner = scanner(fmt)
        self._fed = False

    @property
    def calls(self) -> int:
        return self._scanner.calls

    def feed(self, text: str, fmt: str | None = None) -> list[Piece]:
        if fmt is not None and not self._fed:
            self._scanner = scanner(fmt)
        self._fed = True
        return self._scanner.feed(text)

    def finish(self) -> list[Piece]:
        return self._scanner.finish()


def parse_all(text: str, fmt: str = "hermes") -> tuple[str, list[CallEnd]]:
    """Content and complete tool calls of a whole generation."""
    parser = ToolCallParser(fmt)
    pieces = [*parser.feed(text), *parser.finish()]
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    return content, [p for p in pieces if isinstance(p, CallEnd)]
