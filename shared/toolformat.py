"""Tool-call syntaxes of model families: which one a chat template speaks, and the grammar of a call in it.

A model calls tools in the syntax it was trained on, and its chat template shows which (llama.cpp's chat.cpp and Ollama
tell from the template's text; herd reads how the template writes a call in the conversation's history):

    hermes        <tool_call>{"name": "f", "arguments": {...}}</tool_call>         Hermes, Qwen 2.5/3, SmolLM3, ...
    llama3        {"name": "f", "parameters": {...}}  (or after <|python_tag|>)  Llama 3.1, 3.2, 3.3
    mistral       [TOOL_CALLS][{"name": "f", "arguments": {...}, "id": "..."}]   Mistral Nemo and v3 models
    mistral-args  [TOOL_CALLS]f[ARGS]{...}  ([CALL_ID]id before [ARGS])   Mistral Small 3.2, Devstral, Ministral 3
    gpt-oss       <|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}   harmony
    qwen3-coder   <tool_call><function=f><parameter=k>v</parameter></function></tool_call>  Qwen3-Coder, Qwen 3.5
    seed-oss      the same inside <seed:tool_call></seed:tool_call>               ByteDance Seed-OSS
    glm           <tool_call>f<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>   GLM 4.5-4.7, Ling, Laguna
    functionary-v3.1  <function=f>{...}</function>                                  Functionary 3.1
    functionary-v3.2  name, newline, {...} after the prompt's `>>>` (`all` and text: an answer)  Functionary 3.2
    command-r     <|START_ACTION|>[{"tool_call_id": "0", "tool_name": "f", "parameters": {...}}]<|END_ACTION|>  R7B
    deepseek-r1   (tool calls begin)(tool call begin)function(sep)f + ```json fenced args (call end)(calls end)  R1
    deepseek-v3   (tool calls begin)(tool call begin)f(sep){...}(call end)(calls end)   DeepSeek V3.1
    nemotron-v2   <TOOLCALL>[{"name": "f", "arguments": {...}}]</TOOLCALL>      NVIDIA Nemotron Nano 2
    apriel        <tool_calls>[{"name": "f", "arguments": {...}}]</tool_calls>    Apriel
    minimax-m1    <tool_calls> one {"name": ..., "arguments": ...} per line </tool_calls>  MiniMax M1
    firefunction-v2   functools[{"name": "f", "arguments": {...}}]                FireFunction v2
    minimax-m2    <minimax:tool_call><invoke name="f"><parameter name="k">v</parameter></invoke>...  MiniMax M2
    deepseek-v32/-v4  the same shape with DeepSeek's DSML-prefixed tags (function_calls / tool_calls)
    kimi-k2       <|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{...}
                  <|tool_call_end|><|tool_calls_section_end|>                       Kimi K2
    gemma4, lfm2, granite   Gemma 4, LiquidAI LFM2 / LFM2.5, IBM Granite 3.x (herd.toolsyntax)

The API compiles each tool's arguments (JSON Schema -> GBNF rules named `args-0`, `args-1`, ... in
`ToolConstraint.rules`, refused there when bad; `args-i-j` for the object/array properties the XML-like families
write as JSON text, herd.toolparams); `grammar` here wraps them in the family's call syntax in the worker,
which knows the template. The API's parser (api/translate/tools.py) reads the same syntaxes back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Literal

from herd import toolparams as tp
from herd import toolsyntax as ts
from herd.inference import Grammar, Tool, ToolConstraint

ToolFormat = Literal[
    "hermes",
    "llama3",
    "mistral",
    "mistral-args",
    "gpt-oss",
    "qwen3-coder",
    "seed-oss",
    "glm",
    "kimi-k2",
    "functionary-v3.1",
    "functionary-v3.2",
    "command-r",
    "deepseek-r1",
    "deepseek-v3",
    "nemotron-v2",
    "apriel",
    "minimax-m1",
    "firefunction-v2",
    "minimax-m2",
    "deepseek-v32",
    "deepseek-v4",
    "gemma4",
    "lfm2",
    "granite",
]
FORMATS: tuple[ToolFormat, ...] = (
    "hermes", "llama3", "mistral", "mistral-args", "gpt-oss", "qwen3-coder", "seed-oss", "glm", "kimi-k2",
    "functionary-v3.1", "functionary-v3.2", "command-r", "deepseek-r1", "deepseek-v3", "nemotron-v2",
    "apriel", "minimax-m1", "firefunction-v2", "minimax-m2", "deepseek-v32", "deepseek-v4",
    "gemma4", "lfm2", "granite",
)  # fmt: skip
DSML = "\uff5cDSML\uff5c"
# <PREFIX WRAPPER><PREFIX invoke name="f"><PREFIX parameter name="k"[ string="true"]>v</PREFIX parameter>...
INVOKE: dict[ToolFormat, tuple[str, str]] = {
    "minimax-m2": ("", "minimax:tool_call"),
    "deepseek-v32": (DSML, "function_calls"),
    "deepseek-v4": (DSML, "tool_calls"),
}
# DeepSeek's markers use full-width bars and the SentencePiece space (written out here).
DS_CALLS, DS_CALLS_END = "<\uff5ctool\u2581calls\u2581begin\uff5c>", "<\uff5ctool\u2581calls\u2581end\uff5c>"
DS_CALL, DS_CALL_END = "<\uff5ctool\u2581call\u2581begin\uff5c>", "<\uff5ctool\u2581call\u2581end\uff5c>"
DS_SEP = "<\uff5ctool\u2581sep\uff5c>"
_DS = (DS_CALLS, DS_CALLS_END, DS_CALL, DS_CALL_END, DS_SEP)
_KIMI = (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)

# Control tokens a family's calls are written with: generated text shows them when tools are offered.
MARKERS: dict[ToolFormat, tuple[str, ...]] = {
    "hermes": ("<tool_call>", "</tool_call>"),
    "llama3": ("<|python_tag|>",),
    "mistral": ("[TOOL_CALLS]",),
    "mistral-args": ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"),
    "gpt-oss": ("<|channel|>", "<|message|>", "<|constrain|>", "<|start|>", "<|end|>"),
    "qwen3-coder": ("<tool_call>", "</tool_call>"),
    "seed-oss": ("<seed:tool_call>", "</seed:tool_call>"),
    "glm": ("<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"),
    "kimi-k2": _KIMI,
    "functionary-v3.1": ("<function=", "</function>"),
    "functionary-v3.2": (">>>",),
    "deepseek-r1": _DS,
    "deepseek-v3": _DS,
    "nemotron-v2": ("<TOOLCALL>", "</TOOLCALL>"),
    "apriel": ("<tool_calls>", "</tool_calls>"),
    "minimax-m1": ("<tool_calls>", "</tool_calls>"),
    "firefunction-v2": (" functools",),
    "minimax-m2": ("<minimax:tool_call>", "</minimax:tool_call>"),
    "deepseek-v32": (f"<{DSML}function_calls>", f"</{DSML}function_calls>"),
    "deepseek-v4": (f"<{DSML}tool_calls>", f"</{DSML}tool_calls>"),
    "gemma4": (ts.GEMMA_CALL, ts.GEMMA_CALL_END, ts.GEMMA_QUOTE, "<|tool_response>"),
    "lfm2": (ts.LFM_CALL, ts.LFM_CALL_END),
    "granite": (ts.GRANITE_CALL,),
    "command-r": (
        "<|START_ACTION|>",
        "<|END_ACTION|>",
        "<|START_THINKING|>",
        "<|END_THINKING|>",
        "<|START_RESPONSE|>",
        "<|END_RESPONSE|>",
    ),
}
# Where a call begins: under `auto` the grammar takes over from here (and not before).
TRIGGERS: dict[ToolFormat, tuple[str, ...]] = {
    "hermes": ("<tool_call>",),
    "llama3": ("<|python_tag|>", '{"name"'),
    "mistral": ("[TOOL_CALLS]",),
    "mistral-args": ("[TOOL_CALLS]",),
    "gpt-oss": ("to=functions.",),
    "qwen3-coder": ("<tool_call>",),
    "seed-oss": ("<seed:tool_call>",),
    "glm": ("<tool_call>",),
    "kimi-k2": ("<|tool_calls_section_begin|>",),
    "functionary-v3.1": ("<function=",),
    "command-r": ("<|START_ACTION|>",),
    "deepseek-r1": (DS_CALLS,),
    "deepseek-v3": (DS_CALLS,),
    "nemotron-v2": ("<TOOLCALL>",),
    "apriel": ("<tool_calls>",),
    "minimax-m1": ("<tool_calls>",),
    "firefunction-v2": ("functools[",),
    "minimax-m2": ("<minimax:tool_call>",),
    "deepseek-v32": (f"<{DSML}function_calls>",),
    "deepseek-v4": (f"<{DSML}tool_calls>",),
    "gemma4": (ts.GEMMA_CALL,),
    "lfm2": (ts.LFM_CALL,),
    "granite": (ts.GRANITE_CALL,),
    "functionary-v3.2": (">>>",),  # and each tool's name and a newline: the answer's first line names its recipient
}

_JSON_LIST_TAGS = (("<TOOLCALL>", "</TOOLCALL>"), ("<tool_calls>", "</tool_calls>"))


def _invoke_pattern(fmt: ToolFormat) -> re.Pattern[str]:
    prefix, wrapper = INVOKE[fmt]
    return re.compile(re.escape(f"<{prefix}{wrapper}>") + r"\s*" + re.escape(f'<{prefix}invoke name="probe_tool_fn">'))


# How each family's template writes a call of `probe_tool_fn` in the conversation's history, most specific first.
_RENDERED: tuple[tuple[ToolFormat, re.Pattern[str]], ...] = (
    ("gpt-oss", re.compile(r"to=functions\.probe_tool_fn\b")),
    ("glm", re.compile(r"<tool_call>\s*probe_tool_fn\s*<arg_key>")),
    ("gemma4", re.compile(re.escape(ts.GEMMA_CALL) + r"call:probe_tool_fn\{")),
    ("lfm2", re.compile(re.escape(ts.LFM_CALL) + r"\[probe_tool_fn\(")),
    ("kimi-k2", re.compile(r"<\|tool_call_begin\|>\s*functions\.probe_tool_fn:\d+\s*<\|tool_call_argument_begin\|>")),
    ("seed-oss", re.compile(r"<seed:tool_call>\s*<function=probe_tool_fn>\s*<parameter=")),
    ("qwen3-coder", re.compile(r"<tool_call>\s*<function=probe_tool_fn>\s*<parameter=")),
    ("mistral-args", re.compile(r"\[TOOL_CALLS\]probe_tool_fn(\[CALL_ID\]\w+)?\[ARGS\]")),
    ("mistral", re.compile(r'\[TOOL_CALLS\]\s*\[\s*\{\s*"name"\s*:\s*"probe_tool_fn"\s*,\s*"arguments"\s*:')),
    ("nemotron-v2", re.compile(r'<TOOLCALL>\s*\[\s*\{\s*"name"\s*:\s*"probe_tool_fn"\s*,\s*"arguments"\s*:')),
    ("minimax-m2", _invoke_pattern("minimax-m2")),
    ("deepseek-v32", _invoke_pattern("deepseek-v32")),
    ("deepseek-v4", _invoke_pattern("deepseek-v4")),
    ("apriel", re.compile(r'<tool_calls>\s*\[\s*\{\s*"name"\s*:\s*"probe_tool_fn"\s*,\s*"arguments"\s*:')),
    ("minimax-m1", re.compile(r'<tool_calls>\s*\{\s*"name"\s*:\s*"probe_tool_fn"\s*,\s*"arguments"\s*:')),
    ("firefunction-v2", re.compile(r'functools\[\s*\{\s*"name"\s*:\s*"probe_tool_fn"\s*,\s*"arguments"\s*:')),
    ("hermes", re.compile(r'<tool_call>\s*\{\s*"name"\s*:\s*"probe_tool_fn"\s*,\s*"arguments"\s*:')),
    (
        "command-r",
        re.compile(
            r'<\|START_ACTION\|>\s*\[\s*\{\s*"tool_call_id"\s*:\s*"[^"]*"\s*,\s*"tool_name"\s*:\s*"probe_tool_fn"'
        ),
    ),
    ("deepseek-r1", re.compile(re.escape(DS_CALL) + r"function" + re.escape(DS_SEP) + r"probe_tool_fn\n```json\n")),
    ("deepseek-v3", re.compile(re.escape(DS_CALL) + r"probe_tool_fn" + re.escape(DS_SEP))),
    ("functionary-v3.1", re.compile(r"<function=probe_tool_fn>\s*\{")),
    ("functionary-v3.2", re.compile(r">>>probe_tool_fn\n\s*\{")),
    ("llama3", re.compile(r'\{\s*"name"\s*:\s*"probe_tool_fn"\s*,\s*"parameters"\s*:')),
)


def detect(rendered_call: str) -> ToolFormat | None:
    """The syntax in which a template wrote a call of `probe_tool_fn` (one of the families here), else None.

    Reading the template's own rendering of a call, rather than its source, tells apart families that share
    markers (GLM's `<tool_call>` holds <arg_key> tags, not JSON) and ignores syntaxes a template only mentions.
    """
    for fmt, pattern in _RENDERED:
        if pattern.search(rendered_call):
            return fmt
    return None


# How tools are described in the system prompt, in the family's syntax, for templates that do not show tools.
TOOLS_PROMPTS: dict[ToolFormat, str] = {
    "hermes": (
        "You can call functions. The functions are described in JSON inside <tools></tools>:\n<tools>\n{tools}\n"
        "</tools>\nTo call a function, answer with one JSON object per call, each on its own line inside {open}{close}"
        ' tags:\n{open}{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}{close}\n'
        "A function's result comes back in a <tool_response></tool_response> block."
    ),
    "deepseek-r1": (
        "## Tools\nYou can call these functions (JSON descriptions):\n{tools}\n\nTo call a function, answer with:\n"
        f"{DS_CALLS}{DS_CALL}function{DS_SEP}<function name>\n```json\n<arguments as JSON>\n```{DS_CALL_END}"
        f"{DS_CALLS_END}"
    ),
    "deepseek-v3": (
        "## Tools\nYou can call these functions (JSON descriptions):\n{tools}\n\nTo call a function, answer with:\n"
        f"{DS_CALLS}{DS_CALL}<function name>{DS_SEP}<arguments as JSON>{DS_CALL_END}{DS_CALLS_END}"
    ),
}


def marker_tokens(fmt: ToolFormat, tokenize: Callable[[str, bool], list[int]]) -> frozenset[int]:
    """The ids of `fmt`'s markers that are single tokens in this vocabulary (control tokens among them)."""
    ids = (tokenize(marker, False) for marker in MARKERS[fmt])
    return frozenset(found[0] for found in ids if len(found) == 1)


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _json_call(i: int, name: str, key: str, tail: str = "") -> str:
    head = f'"{{" ws "\\"name\\"" ws ":" ws {_lit(json.dumps(name))} ws "," ws {_lit(json.dumps(key))} ws ":" ws'
    return f'{head} args-{i} {tail}"}}" ws'


def grammar(fmt: ToolFormat, constraint: ToolConstraint, tools: tuple[Tool, ...]) -> Grammar:
    """The grammar of the constrained calls in `fmt`'s syntax; lazy (from its triggers on) unless forced."""
    names = constraint.names
    rules: list[str] = []
    calls: list[str] = []
    by_name = {t.name: t.parameters for t in tools}
    defined = tp.rule_names(constraint.rules)  # the XML-like families use the JSON-valued properties' own rules
    for i, name in enumerate(names):
        schema = by_name.get(name)
        compiled = tp.compiled_rules(i, schema, defined) if defined else None
        if fmt in ("hermes", "nemotron-v2", "apriel", "minimax-m1", "firefunction-v2", "granite"):
            body = _json_call(i, name, "arguments")
        elif fmt == "llama3":
            body = _json_call(i, name, "parameters")
        elif fmt == "mistral":
            body = _json_call(i, name, "arguments", '("," ws "\\"id\\"" ws ":" ws "\\"" [a-zA-Z0-9]{9} "\\"" ws)? ')
        elif fmt == "mistral-args":
            body = f'{_lit(name)} ("[CALL_ID]" [a-zA-Z0-9]{{9}})? "[ARGS]" args-{i}'
        elif fmt == "glm":
            body = tp.glm_call(name, schema, compiled)
        elif fmt == "gemma4":
            body = tp.gemma_call(name, schema)
        elif fmt == "lfm2":
            body = tp.python_call(name, schema)
        elif fmt in INVOKE:
            body = tp.invoke_call(INVOKE[fmt][0], name, schema, compiled)
        elif fmt == "kimi-k2":
            body = (
                f'"<|tool_call_begin|>functions." {_lit(name)} ":" [0-9]{{1,3}} "<|tool_call_argument_begin|>" args-{i}'
            )
            body += ' "<|tool_call_end|>"'
        elif fmt == "deepseek-r1":
            head = f'{_lit(DS_CALL)} "function" {_lit(DS_SEP)} {_lit(name)} "\\n```json\\n"'
            body = f'{head} args-{i} "\\n"? "```" {_lit(DS_CALL_END)}'
        elif fmt == "deepseek-v3":
            body = f"{_lit(DS_CALL)} {_lit(name)} {_lit(DS_SEP)} args-{i} {_lit(DS_CALL_END)}"
        elif fmt == "command-r":
            head = '"{" ws "\\"tool_call_id\\"" ws ":" ws string "," ws "\\"tool_name\\"" ws ":" ws '
            head += _lit(json.dumps(name))
            body = f'{head} ws "," ws "\\"parameters\\"" ws ":" ws args-{i} "}}" ws'
        elif fmt == "functionary-v3.1":
            body = f'"<function=" {_lit(name)} ">" args-{i} "</function>"'
        elif fmt == "functionary-v3.2":
            body = f'{_lit(name)} "\\n" args-{i}'
        elif fmt == "gpt-oss":
            body = f'{_lit(name)} " "? ("<|channel|>commentary" " "?)? "<|constrain|>"? "json"? "<|message|>" args-{i}'
        else:
            body = tp.xml_call(name, schema, compiled)
        rules.append(f"tc-call-{i} ::= {body}")
        calls.append(f"tc-call-{i}")
    call = " | ".join(calls)
    many = constraint.parallel
    if fmt in ("hermes", "qwen3-coder", "seed-oss"):
        opener, closer = MARKERS[fmt][:2]
        rules.append(f'tc-one ::= {_lit(opener)} "\\n"? ws ({call}) {_lit(closer)}')
        root = 'tc-one ("\\n" tc-one)*' if many else "tc-one"
    elif fmt in INVOKE:
        prefix, wrapper = INVOKE[fmt]
        rules.append(f"tc-one ::= {call}")
        calls_ = "tc-one+" if many else "tc-one"
        root = f'{_lit(f"<{prefix}{wrapper}>")} "\\n"? {calls_} {_lit(f"</{prefix}{wrapper}>")}'
    elif fmt == "glm":
        rules.append(f'tc-one ::= "<tool_call>" ({call}) "</tool_call>"')
        root = 'tc-one ("\\n"? tc-one)*' if many else "tc-one"
    elif fmt in ("gemma4", "lfm2"):
        rules.append(f"tc-one ::= {call}")
        rules.append(ts.VALUE_RULES)
        if fmt == "gemma4":  # one marked block per call
            root = f"({_lit(ts.GEMMA_CALL)} tc-one {_lit(ts.GEMMA_CALL_END)})" + ("+" if many else "")
        else:
            more = '("," " "? tc-one)*' if many else ""
            root = f'{_lit(ts.LFM_CALL)} "[" tc-one {more} "]" {_lit(ts.LFM_CALL_END)}'
    elif fmt == "kimi-k2":
        rules.append(f"tc-one ::= {call}")
        one = "tc-one+" if many else "tc-one"
        root = f'"<|tool_calls_section_begin|>" {one} "<|tool_calls_section_end|>"'
    elif fmt in ("deepseek-r1", "deepseek-v3"):
        rules.append(f"tc-one ::= {call}")
        root = f"{_lit(DS_CALLS)} {'tc-one+' if many else 'tc-one'} {_lit(DS_CALLS_END)}"
    elif fmt == "command-r":  # a plan first (it is how the model was trained), then the actions
        rules.append(f"tc-one ::= {call}")
        rules.append('tc-plan ::= "<|START_THINKING|>" ([^<] | "<" [^|])* "<|END_THINKING|>"')
        more = '("," ws tc-one)*' if many else ""
        action = f'"<|START_ACTION|>" "[" ws tc-one {more} "]" ws "<|END_ACTION|>"'
        root = f"tc-plan? {action}" if constraint.forced else action
    elif fmt == "functionary-v3.1":
        rules.append(f"tc-one ::= {call}")
        root = "tc-one+" if many else "tc-one"
    elif fmt == "functionary-v3.2":  # the prompt ends in `>>>`; lazily, the grammar starts at a later `>>>` too
        rules.append(f"tc-one ::= {call}")
        root = '">>>"? tc-one (">>>" tc-one)*' if many else '">>>"? tc-one'
    elif fmt == "llama3":
        rules.append(f"tc-one ::= {call}")
        root = '"<|python_tag|>"? tc-one (";" ws tc-one)*' if many else '"<|python_tag|>"? tc-one'
    elif fmt == "granite":
        rules.append(f"tc-one ::= {call}")
        more = '("," ws tc-one)*' if many else ""
        root = f'{_lit(ts.GRANITE_CALL)} "[" ws tc-one {more} "]"'
    elif fmt in ("nemotron-v2", "apriel", "firefunction-v2"):
        rules.append(f"tc-one ::= {call}")
        more = '("," ws tc-one)*' if many else ""
        opener, closer = {"nemotron-v2": _JSON_LIST_TAGS[0], "apriel": _JSON_LIST_TAGS[1]}.get(fmt, ("functools", ""))
        opening = _lit(opener) if closer else '" "? "functools"'  # FireFunction: ` functools[...]`, no closer
        root = f'{opening} "[" ws tc-one {more} "]" {_lit(closer) if closer else ""}'.rstrip()
    elif fmt == "minimax-m1":
        rules.append(f"tc-one ::= {call}")
        more = '("\\n" tc-one)*' if many else ""
        root = f'"<tool_calls>" "\\n"? tc-one {more} "\\n"? "</tool_calls>"'
    elif fmt == "mistral":
        rules.append(f"tc-one ::= {call}")
        root = '"[TOOL_CALLS]" "[" ws tc-one ("," ws tc-one)* "]"' if many else '"[TOOL_CALLS]" "[" ws tc-one "]"'
    elif fmt == "mistral-args":
        rules.append(f'tc-one ::= "[TOOL_CALLS]" ({call})')
        root = "tc-one tc-one*" if many else "tc-one"
    else:  # gpt-oss: optional reasoning on the analysis channel first; a call ends the turn (<|call|> is EOG)
        rules.append(f'tc-one ::= "to=functions." ({call})')
        rules.append('tc-think ::= "<|channel|>analysis<|message|>" ([^<] | "<" [^|])* "<|end|>" "<|start|>assistant"')
        root = "tc-one" if not constraint.forced else 'tc-think? ("<|channel|>commentary")? " "? tc-one'
    rules.append('xml-value ::= ([^<] | "<" [^/])*')
    rules.append(tp.TYPED_RULES)
    gbnf = "\n".join([f"root ::= {root}", *rules, constraint.rules])
    triggers = TRIGGERS[fmt]
    if fmt == "functionary-v3.2":
        triggers = (*triggers, *(f"{name}\n" for name in names))
    return Grammar(gbnf, () if constraint.forced else triggers)
