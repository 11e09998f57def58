"""Tool parameters typed by their JSON Schema, for the families whose arguments are not JSON: the grammar of each
parameter's value in the family's syntax, and the reading of a value back into JSON of the schema's type.

    qwen3-coder, seed-oss   <parameter=k>v</parameter>          glm   <arg_key>k</arg_key><arg_value>v</arg_value>
    minimax-m2, deepseek-v32/-v4   <parameter name="k"[ string="true"]>v</parameter>
    gemma4   k:<|"|>text<|"|> / k:2 / k:true         lfm2   k='text' / k=2 / k=True

In the XML-like families a string is the element's text as it is, a number or boolean its JSON literal, an enum one
of its literal values, and an object or array JSON text (as llama.cpp's Qwen3-Coder parser reads them) held to the
property's own schema by the rule the API compiled for it (`args-i-j`: tool i's property j, herd.api.grammar.tools),
or to any JSON object or array where the API sent none. The
parameters of a call come in the order of the schema's `properties` (as llama.cpp writes them), required ones
always, optional ones when the model wants them; a schema that lists no properties takes any name with any value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from herd.toolsyntax import GEMMA_QUOTE

Syntax = Literal["xml", "gemma", "python"]
_TYPES = ("string", "integer", "number", "boolean", "null", "object", "array")


@dataclass(frozen=True, slots=True)
class Param:
    """What a parameter's schema allows: JSON types (empty: any), or literal values (`enum` / `const`)."""

    types: frozenset[str] = frozenset()
    enum: tuple[Any, ...] | None = None


Signature = dict[str, Param]  # a tool's parameters, in the order of its schema's properties


def _resolve(schema: Any, root: Any, depth: int = 0) -> Any:
    """A local `$ref` (`#/$defs/x`, `#/definitions/x`) followed; anything else as it is."""
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/") or depth > 8:
        return schema
    found = root
    for part in ref[2:].split("/"):
        found = found.get(part) if isinstance(found, dict) else None
    return _resolve(found, root, depth + 1) if isinstance(found, dict) else {}


def param(schema: Any, root: Any = None) -> Param:
    """The types (or values) one property's schema allows; Param() (anything) when it does not say."""
    schema = _resolve(schema, root if root is not None else schema)
    if not isinstance(schema, dict):
        return Param()
    if "const" in schema:
        return Param(enum=(schema["const"],))
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return Param(enum=tuple(schema["enum"]))
    declared = schema.get("type")
    if isinstance(declared, str):
        declared = [declared]
    if isinstance(declared, list):
        return Param(frozenset(t for t in declared if t in _TYPES))
    branches = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(branches, list) and branches:
        kinds = [param(b, root) for b in branches]
        if any(k.enum is not None or not k.types for k in kinds):
            return Param()
        return Param(frozenset().union(*(k.types for k in kinds)))
    if "properties" in schema:
        return Param(frozenset({"object"}))
    if "items" in schema:
        return Param(frozenset({"array"}))
    return Param()


def signature(parameters: str | Mapping[str, Any] | None) -> tuple[Signature, frozenset[str]]:
    """A tool's parameters schema (JSON text or parsed) -> its properties' Params in order, and the required names."""
    try:
        schema: Any = json.loads(parameters) if isinstance(parameters, str) else parameters
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        return {}, frozenset()
    props = schema.get("properties")
    found = {str(k): param(v, schema) for k, v in props.items()} if isinstance(props, dict) else {}
    required = schema.get("required")
    return found, frozenset(str(r) for r in required) if isinstance(required, list) else frozenset()


def signatures(tools: Iterable[tuple[str, str | Mapping[str, Any] | None]]) -> dict[str, Signature]:
    """(name, parameters schema) of the offered tools -> each tool's parameter types, for reading calls back."""
    return {name: signature(parameters)[0] for name, parameters in tools}


# ---- reading ---------------------------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", dict: "object", list: "array"}.get(type(value), "string")


def typed(text: str, kind: Param | None) -> Any:
    """An XML-like element's text as the JSON value its parameter's schema says it is.

    A string parameter keeps its text as it is (`2` stays "2"); a number, boolean, null, object or array parameter
    takes the JSON value its text reads as (text that does not read as one stays text). Without a schema (a tool
    that lists no properties, a name it does not list): the JSON value when the text reads as one, else the text.
    """
    try:
        value: Any = json.loads(text)
    except ValueError:
        return text
    if kind is None or (not kind.types and kind.enum is None):
        return text if isinstance(value, str) else value
    if kind.enum is not None:
        return text if text in kind.enum or value not in kind.enum else value
    found = _json_type(value)
    if found in kind.types or (found == "integer" and "number" in kind.types):
        return value
    if found == "number" and "integer" in kind.types and float(value).is_integer():
        return int(value)
    return text


# ---- grammars --------------------------------------------------------------------------------------------------

# Literal values of each family's syntax (the other rules they use: xml-value, object and array from the JSON
# primitives, herd.toolsyntax.VALUE_RULES).
TYPED_RULES = "\n".join(
    [
        'tc-int ::= "-"? ("0" | [1-9] [0-9]{0,15})',
        'tc-num ::= tc-int ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})?',
    ]
)
_ANY = {"xml": "xml-value", "gemma": "tc-g-value", "python": "tc-py-value"}
_BY_TYPE: dict[Syntax, dict[str, str]] = {
    "xml": {
        "string": "xml-value",
        "integer": "tc-int",
        "number": "tc-num",
        "boolean": '"true" | "false"',
        "null": '"null"',
        "object": "object",
        "array": "array",
    },
    "gemma": {
        "string": "tc-g-string",
        "integer": "tc-int",
        "number": "tc-num",
        "boolean": '"true" | "false"',
        "null": '"null"',
        "object": "tc-g-object",
        "array": "tc-g-array",
    },
    "python": {
        "string": "tc-py-string",
        "integer": "tc-int",
        "number": "tc-num",
        "boolean": '"True" | "False"',
        "null": '"None"',
        "object": "tc-py-dict",
        "array": "tc-py-list",
    },
}


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _literal(value: Any, syntax: Syntax) -> str | None:
    """One enum value written in the family's syntax (a GBNF expression), None when it has no literal there."""
    if isinstance(value, str):
        if syntax == "xml":
            return _lit(value) if value else '""'
        if syntax == "gemma":
            return _lit(GEMMA_QUOTE + value + GEMMA_QUOTE)
        quoted = [_lit(json.dumps(value, ensure_ascii=False))]
        if "'" not in value and "\\" not in value:
            quoted.insert(0, _lit(f"'{value}'"))
        return "(" + " | ".join(quoted) + ")"
    if isinstance(value, dict | list):
        return _lit(json.dumps(value, ensure_ascii=False)) if syntax == "xml" else None
    if syntax == "python":
        return _lit(repr(value))
    return _lit(json.dumps(value))


def property_rule(tool: int, index: int) -> str:
    """The name of the rule the API compiles for property `index` (in the schema's `properties` order) of the
    arguments of `ToolConstraint.names[tool]`."""
    return f"args-{tool}-{index}"


def json_valued(kind: Param) -> bool:
    """A parameter whose value the XML-like families write as JSON text of an object or array (with no string
    alternative, which would be text as it is): the property's compiled JSON rule holds it to its schema."""
    return kind.enum is None and "string" not in kind.types and bool(kind.types & {"object", "array"})


def compiled_rules(tool: int, parameters: str | None, defined: frozenset[str]) -> dict[str, str]:
    """The compiled rules among `defined` (the rule names of ToolConstraint.rules) of tool `tool`'s JSON-valued
    parameters, by parameter name."""
    props, _ = signature(parameters)
    found = {}
    for index, (key, kind) in enumerate(props.items()):
        name = property_rule(tool, index)
        if json_valued(kind) and name in defined:
            found[key] = name
    return found


def rule_names(rules: str) -> frozenset[str]:
    """The names GBNF rules text defines."""
    return frozenset(line.split(" ::= ", 1)[0] for line in rules.splitlines() if " ::= " in line)


def value_rule(kind: Param | None, syntax: Syntax, compiled: str | None = None) -> str:
    """The GBNF expression of a parameter's value in the family's syntax, typed by its schema (`compiled`: the
    property's compiled JSON rule, for a JSON-valued parameter of an XML-like family)."""
    if compiled is not None and syntax == "xml":
        return f'"\\n"? {compiled} "\\n"?'
    if kind is None or (not kind.types and kind.enum is None):
        return _ANY[syntax]
    if kind.enum is not None:
        literals = [_literal(v, syntax) for v in kind.enum]
        if any(lit is None for lit in literals):
            return _ANY[syntax]
        body = " | ".join(lit for lit in literals if lit is not None)
    elif syntax == "xml" and "string" in kind.types:
        return "xml-value"  # text as it is: numbers and booleans are text too
    else:
        body = " | ".join(_BY_TYPE[syntax][t] for t in _TYPES if t in kind.types)
    return f'"\\n"? ({body}) "\\n"?' if syntax == "xml" else f"({body})"


def in_order(items: list[tuple[str, bool]], sep: str) -> str:
    """GBNF for items (expression, required) in this order, optional ones left out at will, `sep` between those
    written. Empty when there are none. Linear in the number of items (a tool may declare hundreds of properties):
    `upto` is the items so far with at least one written; an item starts it only while all before it are optional."""
    if not sep:
        return " ".join(e if req else f"({e})?" for e, req in items)
    upto = ""
    all_optional = True
    for expr, req in items:
        more = f"{sep} {expr}" if req else f"({sep} {expr})?"
        if not upto:
            upto = expr
        elif all_optional:
            upto = f"({upto} {more} | {expr})"
        else:
            upto = f"{upto} {more}"
        all_optional = all_optional and not req
    return f"({upto})?" if all_optional and upto else upto


def xml_params(
    parameters: str | None, syntax: Syntax, write: Any, sep: str = "", compiled: Mapping[str, str] | None = None
) -> str:
    """A call's parameters in schema order: `write(key, value_expression, kind)` gives one parameter's GBNF;
    `compiled`: the compiled rules of JSON-valued parameters, by name (compiled_rules)."""
    props, required = signature(parameters)
    compiled = compiled or {}
    items = [
        (write(key, value_rule(kind, syntax, compiled.get(key)), kind), key in required) for key, kind in props.items()
    ]
    return in_order(items, sep)


def xml_call(name: str, parameters: str | None, compiled: Mapping[str, str] | None = None) -> str:
    """<function=name> then each parameter of the schema in order (optional ones may be left out)."""

    def write(key: str, value: str, kind: Param) -> str:
        return f'"<parameter=" {_lit(key)} ">" {value} "</parameter>" "\\n"?'

    body = xml_params(parameters, "xml", write, compiled=compiled)
    body = body or '("<parameter=" [^>]+ ">" xml-value "</parameter>" "\\n"?)*'
    return f'"<function=" {_lit(name)} ">" "\\n"? {body} "</function>" "\\n"?'


def glm_call(name: str, parameters: str | None, compiled: Mapping[str, str] | None = None) -> str:
    """The name, then each parameter of the schema in order as <arg_key>k</arg_key><arg_value>v</arg_value>."""

    def write(key: str, value: str, kind: Param) -> str:
        return f'"<arg_key>" {_lit(key)} "</arg_key>" "\\n"? "<arg_value>" {value} "</arg_value>" "\\n"?'

    any_pair = '("<arg_key>" [^<]+ "</arg_key>" "\\n"? "<arg_value>" xml-value "</arg_value>" "\\n"?)*'
    return f'{_lit(name)} "\\n"? {xml_params(parameters, "xml", write, compiled=compiled) or any_pair}'


def invoke_call(prefix: str, name: str, parameters: str | None, compiled: Mapping[str, str] | None = None) -> str:
    """<invoke name="f"> then each parameter of the schema in order; `string="true"` marks (only) a text value."""
    free = '(" string=\\"" ("true" | "false") "\\"")?'

    def write(key: str, value: str, kind: Param) -> str:
        text = value == "xml-value" or (kind.enum is not None and all(isinstance(v, str) for v in kind.enum))
        attr = '(" string=\\"true\\"")?' if text else '(" string=\\"false\\"")?' if kind.types or kind.enum else free
        opening = _lit(f'<{prefix}parameter name="{key}"')
        return f'{opening} {attr} ">" {value} {_lit(f"</{prefix}parameter>")} "\\n"?'

    param_open, param_close = _lit(f"<{prefix}parameter name="), _lit(f"</{prefix}parameter>")
    any_param = f'({param_open} "\\"" [^"]+ "\\"" {free} ">" xml-value {param_close} "\\n"?)*'
    body = xml_params(parameters, "xml", write, compiled=compiled) or any_param
    invoke = _lit(f'<{prefix}invoke name="{name}">')
    return f'{invoke} "\\n"? {body} {_lit(f"</{prefix}invoke>")} "\\n"?'


def gemma_call(name: str, parameters: str | None) -> str:
    """`call:f{k:v,...}`: the schema's parameters in order, values in Gemma 4's syntax typed by the schema."""
    body = xml_params(parameters, "gemma", lambda key, value, kind: f"{_lit(key + ':')} {value}", '","')
    if not body:
        one = 'tc-g-key ":" tc-g-value'
        body = f'({one} ("," {one})*)?'
    return f'{_lit("call:" + name)} "{{" {body} "}}"'


def python_call(name: str, parameters: str | None) -> str:
    """`f(k=v, ...)`: the schema's parameters in order as keyword arguments, values Python literals of their type."""
    body = xml_params(parameters, "python", lambda key, value, kind: f"{_lit(key + '=')} {value}", '"," " "?')
    if not body:
        one = 'tc-g-key "=" tc-py-value'
        body = f'({one} ("," " "? {one})*)?'
    return f'{_lit(name)} "(" {body} ")"'
