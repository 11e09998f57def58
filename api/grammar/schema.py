"""JSON Schema -> llama.cpp GBNF, compiled in the API so a bad or abusive schema is a 400 that never reaches a worker.

One compiler serves OpenAI `response_format`, Ollama `format` and tool arguments (api/grammar/tools.py). Supported: type
(and type lists), properties/required/additionalProperties, items/prefixItems/minItems/maxItems, enum, const,
anyOf/oneOf, allOf of objects, local `$ref` (recursive ones too), string minLength/maxLength, `pattern`
(pattern.py compiles the regex into the grammar; one it cannot compile is refused, since a constraint we would
silently drop is worse than a clear error) and the formats date, time, date-time, uuid, email, hostname, ipv4, ipv6
and uri. With a `pattern`, `format` is not checked (zod sends both; its pattern is the stricter). Numeric bounds are
left to the model.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from herd.api.grammar.pattern import compile_pattern, gbnf_rules
from herd.api.grammar.regex import PatternError
from herd.errors import InvalidRequest

MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_REPEAT = 256  # bounds above this are refused (GBNF expands {m,n} into copies of the rule)
MAX_RULES = 2000
MAX_GRAMMAR_BYTES = 256 * 1024

PRIMITIVES = r"""ws ::= ([ \t\n] [ \t]{0,16})?
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\"" ws
integer ::= "-"? ("0" | [1-9] [0-9]{0,15}) ws
number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})? ws
boolean ::= ("true" | "false") ws
null ::= "null" ws
value ::= object | array | string | number | boolean | null
object ::= "{" ws (string ":" ws value ("," ws string ":" ws value)*)? "}" ws
array ::= "[" ws (value ("," ws value)*)? "]" ws
date ::= [0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [1-2] [0-9] | "3" [0-1])
time ::= ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] [0-9]{2} ":" [0-9]{2})
uuid ::= [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}
"""

_FORMATS = {
    "date": '"\\"" date "\\"" ws',
    "time": '"\\"" time "\\"" ws',
    "date-time": '"\\"" date "T" time "\\"" ws',
    "uuid": '"\\"" uuid "\\"" ws',
}
_HEX4 = "[0-9a-fA-F]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DATE = "[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"


def _ipv6() -> str:
    """Eight groups, or fewer around one `::` standing for at least one group."""
    forms = [f"(?:{_HEX4}:){{7}}{_HEX4}"]
    for left in range(8):
        head = f"(?:{_HEX4}:){{{left - 1}}}{_HEX4}" if left else ""
        room = 7 - left
        tail = f"(?:{_HEX4}(?::{_HEX4}){{0,{room - 1}}})?" if room else ""
        forms.append(f"{head}::{tail}")
    return "^(?:" + "|".join(forms) + ")$"


_FORMAT_PATTERNS = {
    "email": r"^[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}$",
    "hostname": f"^{_LABEL}(?:\\.{_LABEL})*$",
    "ipv4": f"^(?:{_OCTET}\\.){{3}}{_OCTET}$",
    "ipv6": _ipv6(),
    # date, time, date-time and uuid as the rules in PRIMITIVES, for when a length bound joins them
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_DATE}T{_TIME}$",
    "uuid": "^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$",
    "uri": r"^[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+$",
}
_TYPES = {"string", "integer", "number", "boolean", "null", "object", "array"}
_IGNORED_STRING_FORMATS = {"duration", "regex"}


def literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    return json.dumps(text, ensure_ascii=False)


class _Compiler:
    def __init__(self, root: Any, param: str) -> None:
        self._root = root
        self._param = param
        self.rules: OrderedDict[str, str] = OrderedDict()
        self._bodies: dict[str, str] = {}  # rule body -> name, so identical sub-schemas share a rule
        self._refs: dict[str, str] = {}
        self._patterns: dict[tuple[str, int, int | None], str] = {}

    def fail(self, path: str, message: str) -> InvalidRequest:
        return InvalidRequest(message, param=f"{self._param}{path}")

    def add(self, hint: str, body: str) -> str:
        if body in self._bodies:
            return self._bodies[body]
        name = self._fresh(hint)
        self.rules[name] = body
        self._bodies[body] = name
        if len(self.rules) > MAX_RULES:
            raise self.fail("", f"the schema is too large (more than {MAX_RULES} grammar rules)")
        return name

    def _fresh(self, hint: str) -> str:
        base = "".join(c if c.isalnum() else "-" for c in hint).strip("-").lower() or "r"
        base = f"s-{base}"[:48]
        name, i = base, 1
        while name in self.rules:
            i += 1
            name = f"{base}-{i}"
        return name

    def visit(self, schema: Any, path: str, hint: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise self.fail(path, f"the schema nests deeper than {MAX_DEPTH} levels")
        if schema is True or schema == {}:
            return "value"
        if not isinstance(schema, dict):
            raise self.fail(path, "a schema must be an object (or true)")
        if "$ref" in schema:
            return self._ref(schema["$ref"], path, depth)
        if "const" in schema:
            return self.add(hint, literal(json.dumps(schema["const"])) + " ws")
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.fail(f"{path}.enum", "enum must be a non-empty array")
            return self.add(hint, "(" + " | ".join(literal(json.dumps(v)) for v in values) + ") ws")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise self.fail(f"{path}.{key}", f"{key} must be a non-empty array")
                alts = [self.visit(s, f"{path}.{key}[{i}]", f"{hint}-{i}", depth + 1) for i, s in enumerate(options)]
                return self.add(hint, " | ".join(alts))
        if "allOf" in schema:
            return self.visit(self._merge(schema, path), path, hint, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise self.fail(f"{path}.type", "type must not be an empty array")
            alts = [self.visit({**schema, "type": k}, path, f"{hint}-{k}", depth + 1) for k in kind]
            return self.add(hint, " | ".join(alts))
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return "value"
        if kind not in _TYPES:
            raise self.fail(f"{path}.type", f"unknown type {kind!r}")
        if kind == "object":
            return self._object(schema, path, hint, depth)
        if kind == "array":
            return self._array(schema, path, hint, depth)
        if kind == "string":
            return self._string(schema, path, hint)
        return str(kind)  # integer, number, boolean, null: the primitive rules

    def _ref(self, ref: Any, path: str, depth: int) -> str:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(f"{path}.$ref", "only local references ('#/...') are allowed")
        if ref in self._refs:
            return self._refs[ref]
        target: Any = self._root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise self.fail(f"{path}.$ref", f"the reference {ref!r} points at nothing")
            target = target[part]
        name = self._fresh(ref.rsplit("/", 1)[-1])
        self._refs[ref] = name
        self.rules[name] = ""  # reserved first, so a recursive schema refers to itself
        self.rules[name] = self.visit(target, f"{path}.$ref", name, depth + 1)
        return name

    def _merge(self, schema: dict[str, Any], path: str) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        parts = schema["allOf"]
        if not isinstance(parts, list):
            raise self.fail(f"{path}.allOf", "allOf must be an array")
        for i, part in enumerate(parts):
            while isinstance(part, dict) and "$ref" in part and len(part) == 1:
                part = self._resolve(part["$ref"], f"{path}.allOf[{i}]")
            if not isinstance(part, dict) or part.get("type", "object") != "object":
                raise self.fail(f"{path}.allOf[{i}]", "allOf is supported for object schemas only")
            merged["type"] = "object"
            merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
        return merged

    def _resolve(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(f"{path}.$ref", "only local references ('#/...') are allowed")
        target: Any = self._root
        for part in filter(None, ref[1:].split("/")):
            if not isinstance(target, dict) or part not in target:
                raise self.fail(f"{path}.$ref", f"the reference {ref!r} points at nothing")
            target = target[part]
        return target

    def _object(self, schema: dict[str, Any], path: str, hint: str, depth: int) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise self.fail(f"{path}.properties", "properties must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.fail(f"{path}.required", "required must be an array of strings")
        extra = schema.get("additionalProperties", True)
        if not props:
            if extra is False:
                return self.add(hint, '"{" ws "}" ws')
            value = "value" if extra is True else self.visit(extra, f"{path}.additionalProperties", hint, depth + 1)
            return self.add(hint, f'"{{" ws (string ":" ws {value} ("," ws string ":" ws {value})*)? "}}" ws')
        pairs = []
        for key, sub in props.items():
            rule = self.visit(sub, f"{path}.properties.{key}", f"{hint}-{key}", depth + 1)
            pairs.append((f'{literal(literal(key))} ws ":" ws {rule}', key in required))
        # Properties come in declared order; an optional one may be left out. `tail_i` is what may follow once
        # something was written (each part then opens with a comma); `head_i` is where the object may start.
        heads: list[str] = [""] * (len(pairs) + 1)
        for i in range(len(pairs) - 1, -1, -1):
            pair, needed = pairs[i]
            tail = " ".join(f'"," ws {p}' if req else f'("," ws {p})?' for p, req in pairs[i + 1 :])
            here = f"{pair} {tail}".strip()
            if needed:
                heads[i] = here
            else:
                later = heads[i + 1]
                heads[i] = f"{here} | {self.add(f'{hint}-from-{i + 1}', later)}" if later else f"({here})?"
        body = heads[0] or ""
        inner = self.add(f"{hint}-fields", body) if body else ""
        return self.add(hint, f'"{{" ws {inner} "}}" ws' if inner else '"{" ws "}" ws')

    def _bound(self, schema: dict[str, Any], key: str, path: str) -> int | None:
        value = schema.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(f"{path}.{key}", f"{key} must be a non-negative integer")
        if value > MAX_REPEAT:
            raise self.fail(f"{path}.{key}", f"{key} above {MAX_REPEAT} cannot be enforced")
        return value

    def _array(self, schema: dict[str, Any], path: str, hint: str, depth: int) -> str:
        lo = self._bound(schema, "minItems", path) or 0
        hi = self._bound(schema, "maxItems", path)
        prefix = schema.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise self.fail(f"{path}.prefixItems", "prefixItems must be an array")
        if prefix:
            parts = [self.visit(s, f"{path}.prefixItems[{i}]", f"{hint}-{i}", depth + 1) for i, s in enumerate(prefix)]
            return self.add(hint, '"[" ws ' + ' "," ws '.join(parts) + ' "]" ws')
        item = self.visit(schema.get("items", True), f"{path}.items", f"{hint}-item", depth + 1)
        if hi is not None and hi < lo:
            raise self.fail(f"{path}.maxItems", "maxItems is below minItems")
        if hi == 0:
            return self.add(hint, '"[" ws "]" ws')
        more_lo = max(lo - 1, 0)
        more = f"{{{more_lo},{hi - 1}}}" if hi is not None else ("*" if more_lo == 0 else f"{{{more_lo},}}")
        items = f'{item} ("," ws {item}){more}'
        return self.add(hint, f'"[" ws {items if lo else f"({items})?"} "]" ws')

    def _string(self, schema: dict[str, Any], path: str, hint: str) -> str:
        lo = self._bound(schema, "minLength", path) or 0
        hi = self._bound(schema, "maxLength", path)
        if hi is not None and hi < lo:
            raise self.fail(f"{path}.maxLength", "maxLength is below minLength")
        pattern, fmt = schema.get("pattern"), schema.get("format")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise self.fail(f"{path}.pattern", "pattern must be a string")
            return self._pattern(pattern, lo, hi, f"{path}.pattern", hint)
        if fmt in _FORMATS and lo == 0 and hi is None:
            return self.add(hint, _FORMATS[fmt])
        if fmt in _FORMAT_PATTERNS:
            return self._pattern(_FORMAT_PATTERNS[fmt], lo, hi, f"{path}.format", hint)
        if fmt is not None and fmt not in _IGNORED_STRING_FORMATS:
            raise self.fail(f"{path}.format", f"string format {fmt!r} is not supported")
        if lo == 0 and hi is None:
            return "string"
        count = f"{{{lo},{hi}}}" if hi is not None else f"{{{lo},}}"
        return self.add(hint, f'"\\"" char{count} "\\"" ws')

    def _pattern(self, pattern: str, lo: int, hi: int | None, path: str, hint: str) -> str:
        """A string rule whose content is the automaton of `pattern` (and the length bounds), a rule per state."""
        key = (pattern, lo, hi)
        if key in self._patterns:
            return self._patterns[key]
        try:
            dfa = compile_pattern(pattern, lo, hi)
        except PatternError as e:
            raise self.fail(path, f"the pattern cannot be enforced: {e}") from None
        names: dict[int, str] = {}
        for state, moves in enumerate(dfa.moves):
            if moves:
                names[state] = self._fresh(f"{hint}-re-{state}")
                self.rules[names[state]] = ""  # reserved, so the next fresh name differs
        for state, body in gbnf_rules(dfa, names.__getitem__).items():
            self.rules[names[state]] = body
        if len(self.rules) > MAX_RULES:
            raise self.fail(path, f"the schema is too large (more than {MAX_RULES} grammar rules)")
        rule = self.add(hint, f'"\\"" {names.get(0, "")} "\\"" ws')
        self._patterns[key] = rule
        return rule


def _load(schema: Any, param: str) -> Any:
    size = len(json.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"the schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted", param=param)
    return schema


def _render(rules: OrderedDict[str, str], root: str, param: str) -> str:
    lines = [f"root ::= {root}", *(f"{name} ::= {body}" for name, body in rules.items())]
    grammar = "\n".join(lines) + "\n" + PRIMITIVES
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise InvalidRequest("the schema compiles to a grammar that is too large", param=param)
    return grammar


def schema_grammar(schema: Any, param: str) -> str:
    """A grammar for one JSON value matching `schema` (the whole output)."""
    compiler = _Compiler(_load(schema, param), param)
    root = compiler.visit(schema, "", "root", 0)
    return _render(compiler.rules, root, param)


JSON_OBJECT_GRAMMAR = "root ::= object\n" + PRIMITIVES


class ToolSpec:
    """A function the model may call: its name and the JSON schema of its arguments."""

    __slots__ = ("name", "parameters")

    def __init__(self, name: str, parameters: Any) -> None:
        self.name = name
        self.parameters = parameters


class GrammarCache:
    """Compiled grammars by their canonical request, bounded, least recently used out (one per API process)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[str, str] = OrderedDict()

    def get_or_compile(self, key: str, compile_: Any) -> str:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        grammar: str = compile_()
        self._items[key] = grammar
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return grammar
