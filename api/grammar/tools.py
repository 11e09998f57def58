"""Tools' argument schemas -> GBNF rules `args-0`, `args-1`, ... that the worker wraps in its model's call syntax.

The schemas are compiled here, in the API, so a bad or abusive one is a 400 naming the tool (`tools[i]...`) that
never reaches a worker; which call syntax surrounds them (Hermes tags, Llama 3 JSON, Mistral's [TOOL_CALLS], ...)
depends on the model's template, which only the worker reads (herd.toolformat).
"""

from __future__ import annotations

from collections import OrderedDict

from herd.api.grammar.schema import MAX_GRAMMAR_BYTES, PRIMITIVES, ToolSpec, _Compiler
from herd.errors import InvalidRequest


def argument_rules(tools: list[ToolSpec], param: str) -> str:
    """GBNF rules with the arguments object of `tools[i]` as rule `args-i` (no root rule)."""
    compiler = _Compiler({}, param)
    heads = []
    for i, tool in enumerate(tools):
        compiler._root = tool.parameters  # local $refs of a tool's schema resolve inside that schema
        compiler._refs = {}
        schema = tool.parameters if tool.parameters else {"type": "object"}
        heads.append(f"args-{i} ::= {compiler.visit(schema, f'[{i}].function.parameters', f'{tool.name}-args', 0)}")
    rules: OrderedDict[str, str] = compiler.rules
    text = "\n".join([*heads, *(f"{name} ::= {body}" for name, body in rules.items())]) + "\n" + PRIMITIVES
    if len(text) > MAX_GRAMMAR_BYTES:
        raise InvalidRequest("the tools' schemas compile to a grammar that is too large", param=param)
    return text
