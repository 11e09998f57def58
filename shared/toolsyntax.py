"""Tool calls that are not JSON, and calls written as plain text: Gemma 4's and LFM2's argument syntaxes (writing,
reading and grammars), and the families whose templates only describe their syntax in the tools prompt.

    gemma4    <|tool_call>call:f{city:<|"|>Paris<|"|>,days:2}<tool_call|>     Gemma 4 (strings between <|"|> marks)
    lfm2      <|tool_call_start|>[f(city='Paris', days=2)]<|tool_call_end|>   LiquidAI LFM2 / LFM2.5 (Python calls)
    granite   <|tool_call|>[{"name": "f", "arguments": {...}}]                IBM Granite 3.x

Granite 3.3's, LFM2's and LFM2.5 Instruct's templates never write a call in the history: they tell the model the
syntax (or show its tool-list markers) when tools are offered, and print an assistant turn's content only. herd tells
them apart by that prompt (`detect_prompt`), and writes an earlier call into the assistant's content in the family's
syntax (`text_calls`), as the model itself wrote it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from typing import Any, Literal

GEMMA_CALL, GEMMA_CALL_END, GEMMA_QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'
LFM_CALL, LFM_CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
GRANITE_CALL = "<|tool_call|>"

# What a template's rendered tools prompt (no system message of the caller's) says, for templates that do not
# render calls: narrow on purpose, the family's own marker in the family's own sentence or position.
Prompted = Literal["granite", "lfm2"]
_PROMPTED: tuple[tuple[Prompted, re.Pattern[str]], ...] = (
    ("granite", re.compile(r"respond only with <\|tool_call\|> followed by a JSON list of tools")),
    ("lfm2", re.compile(r'<\|im_start\|>system\nList of tools: (?:<\|tool_list_start\|>)?\[\{"type": "function"')),
)


# herd's own words for a family's syntax, told when the template leaves its sentence out (Granite 3.3's prints it only
# in its default system prompt, which a caller's system message replaces).
SYNTAX_PROMPTS: dict[str, str] = {
    "granite": (
        "To call tools from the available_tools list, answer with nothing but the marker <|tool_call|> and then a JSON "
        'list of the calls, each an object {"name": "<tool name>", "arguments": {<the arguments as JSON>}}. Call only '
        "tools in that list; when none fits, tell the user so."
    ),
}


def detect_prompt(tools_prompt: str) -> Prompted | None:
    """The family whose template described its call syntax (or tool list) in this prompt, if one herd knows."""
    return next((fmt for fmt, pattern in _PROMPTED if pattern.search(tools_prompt)), None)


def _python(value: Any) -> str:
    """A value as LFM2.5's template writes it: strings single-quoted as they are, objects as JSON, others as Python."""
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def text_calls(fmt: str, calls: Sequence[tuple[str, str]]) -> str:
    """Calls (name, JSON arguments) as the model writes them, for templates that print only an answer's text."""
    parsed = [(name, _arguments(args)) for name, args in calls]
    if fmt == "granite":
        listed = [{"name": name, "arguments": args} for name, args in parsed]
        return GRANITE_CALL + json.dumps(listed, ensure_ascii=False)
    written = (f"{name}({', '.join(f'{k}={_python(v)}' for k, v in args.items())})" for name, args in parsed)
    return f"{LFM_CALL}[{', '.join(written)}]{LFM_CALL_END}"


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ---- reading ---------------------------------------------------------------------------------------------------


def parse_python_calls(text: str) -> list[tuple[str, str]] | None:
    """`[f(a='x', b=1), g()]` -> [(name, JSON arguments)], or None when it is not a list of such calls."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return None
    items = tree.elts if isinstance(tree, ast.List) else [tree]
    calls = []
    for item in items:
        if not (isinstance(item, ast.Call) and isinstance(item.func, ast.Name | ast.Attribute)) or item.args:
            return None
        name = ast.unparse(item.func)
        try:
            args = {kw.arg: _literal(kw.value) for kw in item.keywords if kw.arg is not None}
        except ValueError:
            return None
        calls.append((name, json.dumps(args, ensure_ascii=False)))
    return calls


_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _literal(node: ast.expr | None) -> Any:
    """A Python literal, with JSON's true/false/null too (models mix them, and objects are written as JSON)."""
    if isinstance(node, ast.Name) and node.id in _WORDS:
        return _WORDS[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {str(_literal(k)): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Constant | ast.UnaryOp):
        return ast.literal_eval(node)
    raise ValueError("not a literal")


class _GemmaReader:
    """Gemma 4 values: <|"|>strings<|"|>, numbers, true/false/null, {key:value,...} (keys bare or quoted), [...]."""

    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def value(self) -> Any:
        text = self.text
        if text.startswith(GEMMA_QUOTE, self.at):
            end = text.find(GEMMA_QUOTE, self.at + len(GEMMA_QUOTE))
            if end < 0:
                raise ValueError("unclosed string")
            found, self.at = text[self.at + len(GEMMA_QUOTE) : end], end + len(GEMMA_QUOTE)
            return found
        if text.startswith("{", self.at):
            return self.mapping()
        if text.startswith("[", self.at):
            self.at += 1
            items: list[Any] = []
            while not self._take("]"):
                if items and not self._take(","):
                    raise ValueError("expected ,")
                items.append(self.value())
            return items
        match = re.compile(r"[^,}\]]+").match(text, self.at)
        if match is None:
            raise ValueError("expected a value")
        self.at = match.end()
        word = match.group().strip()
        return _WORDS[word] if word in _WORDS else json.loads(word)

    def mapping(self) -> dict[str, Any]:
        if not self._take("{"):
            raise ValueError("expected {")
        found: dict[str, Any] = {}
        while not self._take("}"):
            if found and not self._take(","):
                raise ValueError("expected ,")
            if self.text.startswith(GEMMA_QUOTE, self.at):
                key = self.value()
            else:
                colon = self.text.find(":", self.at)
                if colon < 0:
                    raise ValueError("expected :")
                key, self.at = self.text[self.at : colon].strip(), colon
            if not self._take(":"):
                raise ValueError("expected :")
            found[str(key)] = self.value()
        return found

    def _take(self, char: str) -> bool:
        while self.at < len(self.text) and self.text[self.at] in " \n\t":
            self.at += 1
        if self.text.startswith(char, self.at):
            self.at += len(char)
            return True
        if self.at >= len(self.text):
            raise ValueError("ended early")
        return False


def parse_gemma_call(text: str) -> tuple[str, str] | None:
    """`call:f{key:value,...}` (between Gemma 4's call markers) -> (name, JSON arguments), or None."""
    text = text.strip()
    brace = text.find("{")
    if not text.startswith("call:") or brace < 0:
        return None
    reader = _GemmaReader(text[brace:])
    try:
        args = reader.mapping()
    except (ValueError, KeyError):
        return None
    if text[brace + reader.at :].strip():
        return None
    return text[len("call:") : brace].strip(), json.dumps(args, ensure_ascii=False)


# ---- grammars --------------------------------------------------------------------------------------------------


VALUE_RULES = "\n".join(
    [
        'tc-g-value ::= tc-g-string | tc-number | "true" | "false" | "null" | tc-g-object | tc-g-array',
        f'tc-g-string ::= {json.dumps(GEMMA_QUOTE)} ([^<] | "<" [^|])* {json.dumps(GEMMA_QUOTE)}',
        'tc-g-object ::= "{" (tc-g-key ":" tc-g-value ("," tc-g-key ":" tc-g-value)*)? "}"',
        'tc-g-array ::= "[" (tc-g-value ("," tc-g-value)*)? "]"',
        "tc-g-key ::= [a-zA-Z_] [a-zA-Z0-9_]*",
        'tc-number ::= "-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
        'tc-py-value ::= tc-py-string | tc-number | "True" | "False" | "None" | tc-py-list | tc-py-dict',
        'tc-py-string ::= "\'" ([^\'\\\\] | "\\\\" [^\\n])* "\'" | "\\"" ([^"\\\\] | "\\\\" [^\\n])* "\\""',
        'tc-py-list ::= "[" (tc-py-value ("," " "? tc-py-value)*)? "]"',
        'tc-py-dict ::= "{" (tc-py-string ":" " "? tc-py-value ("," " "? tc-py-string ":" " "? tc-py-value)*)? "}"',
    ]
)
