"""Tools' argument schemas -> GBNF rules `args-0`, `args-1`, ... that the worker wraps in its model's call syntax.

The schemas are compiled here, in the API, so a bad or abusive one is a 400 naming the tool (`tools[i]...`) that
never reaches a worker; which call syntax surrounds them (Hermes tags, Llama 3 JSON, Mistral's [TOOL_CALLS], ...)
depends on the model's template, which only the worker reads (herd.toolformat).
"""

from __future__ import annotations

from collections import OrderedDict

from herd import toolparams
from herd.api.grammar.schema import MAX_GRAMMAR_BYTES, PRIMITIVES, ToolSpec, _Compiler
from herd.errors import InvalidRequest


def argument_rules(tools: list[ToolSpec], param: str) -> str:
    """GBNF rules with the arguments object of `tools[i]` as rule `args-i` (no root rule), and its JSON-valued
    property j as `args-i-j` (herd.toolparams.property_rule)."""
    compiler = _Compiler({}, param)
    heads = []
    for i, tool in enumerate(tools):
        compiler._root = tool.parameters  # local $refs of a tool's schema resolve inside that schema
        compiler._refs = {}
        schema = tool.parameters if tool.parameters else {"type": "object"}
        path, hint = f"[{i}].function.parameters", f"{tool.name}-args"
        heads.append(f"args-{i} ::= {compiler.visit(schema, path, hint, 0)}")
        # The XML-like families write an object or array parameter as JSON text on its own: its property's rule
        # holds it to the property's schema. Visited again as the arguments object visited it, so the rules it
        # needs are the ones already made (identical bodies share a rule).
        props = schema.get("properties") if isinstance(schema, dict) else None
        for j, (key, sub) in enumerate(props.items() if isinstance(props, dict) else ()):
            if toolparams.json_valued(toolparams.param(sub, schema)):
                rule = compiler.visit(sub, f"{path}.properties.{key}", f"{hint}-{key}", 1)
                heads.append(f"{toolparams.property_rule(i, j)} ::= {rule}")
    rules: OrderedDict[str, str] = compiler.rules
    text = "\n".join([*heads, *(f"{name} ::= {body}" for name, body in rules.items())]) + "\n" + PRIMITIVES
    if len(text) > MAX_GRAMMAR_BYTES:
        raise InvalidRequest("the tools' schemas compile to a grammar that is too large", param=param)
    return text
