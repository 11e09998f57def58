"""Generated text -> content and tool calls, incrementally, in the syntax of the model's family (herd.toolformat).

The worker names the syntax on a choice's first delta (`TokenDelta.tool_format`); a `ToolCallParser` reads Hermes
`<tool_call>` tags (the fallback) until told otherwise, before it has read anything. The scanners live in
tool_json.py (calls that are JSON objects) and tool_tagged.py (calls whose parts are marked with tags). The offered
tools' parameter types (herd.toolparams.signatures) type the values of the families whose arguments are not JSON.
"""

from __future__ import annotations

from collections.abc import Mapping

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
from herd.toolparams import Signature

__all__ = ["CallArguments", "CallEnd", "CallStart", "Content", "Piece", "ToolCallParser", "parse_all", "scanner"]


def scanner(fmt: str, signatures: Mapping[str, Signature] | None = None) -> Scanner:
    """A fresh scanner for a herd.toolformat name (Hermes for a name it does not know)."""
    signatures = signatures or {}
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
        return Xml(signatures=signatures)
    if fmt in INVOKE:
        prefix, wrapper = INVOKE[fmt]
        return Invoke((f"<{prefix}{wrapper}>",), signatures=signatures, prefix=prefix, closer=f"</{prefix}{wrapper}>")
    if fmt == "glm":
        return Glm(signatures=signatures)
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
        return Xml(("<seed:tool_call>",), signatures=signatures, closer="</seed:tool_call>")
    return Hermes()


class ToolCallParser:
    """Feed text deltas; get content and tool-call pieces back in order."""

    __slots__ = ("_fed", "_scanner", "_signatures")

    def __init__(self, fmt: str = "hermes", signatures: Mapping[str, Signature] | None = None) -> None:
        self._signatures = signatures
        self._scanner = scanner(fmt, signatures)
        self._fed = False

    @property
    def calls(self) -> int:
        return self._scanner.calls

    def feed(self, text: str, fmt: str | None = None) -> list[Piece]:
        if fmt is not None and not self._fed:
            self._scanner = scanner(fmt, self._signatures)
        self._fed = True
        return self._scanner.feed(text)

    def finish(self) -> list[Piece]:
        return self._scanner.finish()


def parse_all(
    text: str, fmt: str = "hermes", signatures: Mapping[str, Signature] | None = None
) -> tuple[str, list[CallEnd]]:
    """Content and complete tool calls of a whole generation."""
    parser = ToolCallParser(fmt, signatures)
    pieces = [*parser.feed(text), *parser.finish()]
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    return content, [p for p in pieces if isinstance(p, CallEnd)]
