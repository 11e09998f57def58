"""Chat prompts from the GGUF's own Jinja chat template, adapted to what the template accepts (probed once per model).

Templates differ in the conversations they take: some refuse a system role (Gemma), some demand strict
user/assistant alternation (Mistral), some render no tools, tool calls or tool results, some print tool-call
arguments as strings only or check the shape of call ids. As llama.cpp's minja does, the template is probed with
small conversations when the model loads, and each conversation is adapted to it: the system prompt folded into the
first user turn, tool results given as user turns, tools described in the system prompt in Hermes `<tool_call>`
syntax (the fallback tool format), an empty assistant turn between a tool result and the next user turn, ...
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from herd import reasoning, toolformat, toolsyntax
from herd.errors import InvalidRequest
from herd.inference import ChatMessage, Tool
from herd.workers.template_env import TemplateEnvironment

log = logging.getLogger("herd.workers.template")

# Hermes/Qwen tool-call syntax: how tools are described to a model whose template renders none.
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_PROMPT = toolformat.TOOLS_PROMPTS["hermes"]

# ChatML: the fallback when a GGUF carries no template (SmolLM2's own template is ChatML too).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool_fn",
        "description": "probe",
        "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}, "required": ["probe_arg"]},
    },
}


class _Refused(Exception):
    """raise_exception() in a template: it refuses the conversation's shape."""


def _raise(message: str) -> None:
    raise _Refused(message)


@dataclass(slots=True)
class Caps:
    """What a template accepts and renders, found by probing it."""

    system: bool = True
    alternation: bool = False  # refuses two user turns in a row
    tools: bool = False  # renders the `tools` it is given
    tool_calls: bool = False  # renders an assistant turn's tool_calls
    tool_results: bool = False  # renders tool-role messages
    string_arguments: bool = False  # prints call arguments as given, so they must be JSON text
    short_ids: bool = False  # wants 9-character alphanumeric call ids (Mistral)
    # A user turn right after a tool result: as it is, after an empty assistant turn, or inside the result.
    after_result: str = "as_is"


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str, eos_token: str, adds_bos: bool = False) -> None:
        """`adds_bos`: the tokenizer puts BOS in front itself, so a BOS the template writes is dropped (as
        llama.cpp's chat.cpp does; two BOS tokens in a row degrade some models)."""
        self._adds_bos = adds_bos
        self._env = TemplateEnvironment()
        self._env.globals["raise_exception"] = _raise
        try:
            self._template = self._env.from_string(source or CHATML)
        except jinja2.TemplateSyntaxError as exc:  # llama.cpp, too, falls back to ChatML then
            log.warning("the model's chat template does not compile (%s); using ChatML", exc)
            self._template, source = self._env.from_string(CHATML), None
        self._bos = bos_token
        self._eos = eos_token
        self.caps, rendered_call, tools_prompt = self._probe()
        # A template that writes calls in a syntax herd reads speaks it, if it also renders the tools or herd can
        # describe them in that syntax (DeepSeek's templates leave that to the caller); others get Hermes tags
        # described in the system prompt (the fallback).
        found = toolformat.detect(rendered_call) if self.caps.tool_calls else None
        if found is not None and not self.caps.tools and found not in toolformat.TOOLS_PROMPTS:
            found = None
        self.native_calls = found is not None  # calls and results in the history as the template writes them
        # Templates that only tell the model its syntax (Granite 3.3, LFM2): calls go into the answer's text.
        prompted = toolsyntax.detect_prompt(tools_prompt) if found is None and self.caps.tools else None
        self.text_calls = prompted is not None
        self.knows_tools = (self.native_calls and self.caps.tools) or self.text_calls  # it shows the tools itself
        self.tool_format: toolformat.ToolFormat = found or prompted or "hermes"
        self.reasoning = reasoning.detect(source or "")  # how the model reasons before answering, if it does

    # ---- probing -------------------------------------------------------------------------------------------

    def _try(self, rows: list[dict[str, Any]], **extra: Any) -> str | None:
        try:
            return self._render(rows, **extra)
        except (_Refused, jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError):
            return None

    def _probe(self) -> tuple[Caps, str, str]:
        caps, rendered_call = Caps(), ""
        user = {"role": "user", "content": "probe user"}
        out = self._try([{"role": "system", "content": "probe system"}, user])
        caps.system = out is not None and "probe system" in out
        out = self._try([user, {"role": "user", "content": "probe again"}])
        caps.alternation = out is None
        tools_prompt = self._try([user], tools=[_PROBE_TOOL]) or ""
        caps.tools = "probe_tool_fn" in tools_prompt
        for short, as_text in ((False, False), (False, True), (True, False), (True, True)):
            call = _call_row(
                "probe_tool_fn", '{"probe_arg": "probe value"}', "abcDEF123" if short else "call_probe_0001", as_text
            )
            out = self._try([user, call], tools=[_PROBE_TOOL])
            if out is None or "probe value" not in out:  # some write an assistant turn only once a turn follows it
                result = {"role": "tool", "content": "probe result", "tool_call_id": call["tool_calls"][0]["id"]}
                out = self._try([user, call, result, {"role": "user", "content": "probe later"}], tools=[_PROBE_TOOL])
            if out is not None and "probe_tool_fn" in out and "probe value" in out:
                caps.tool_calls, caps.short_ids, caps.string_arguments = True, short, as_text
                rendered_call = out[out.rfind("probe user") :]
                break
        if caps.tool_calls:
            for short in (caps.short_ids, True):  # some templates check the id's shape on the result only
                caps.short_ids = short
                call = _calls_row(caps, ("probe_tool_fn", '{"probe_arg": "x"}', "call_probe_0001"))
                result = {"role": "tool", "content": "probe result", "tool_call_id": call["tool_calls"][0]["id"]}
                out = self._try([user, call, result], tools=[_PROBE_TOOL])
                caps.tool_results = out is not None and "probe result" in out
                if caps.tool_results:
                    break
            if caps.tool_results:
                later = [user, call, result, {"role": "user", "content": "probe later"}]
                for mode in ("as_is", "empty_answer", "into_result"):
                    if self._try(_after_results(later, mode), tools=[_PROBE_TOOL]) is not None:
                        caps.after_result = mode
                        break
        else:  # results after an answer whose text holds the calls (templates that render no calls)
            answer = {"role": "assistant", "content": "probe answer"}
            result = {"role": "tool", "content": "probe result", "tool_call_id": "call_probe_0001"}
            out = self._try([user, answer, result], tools=[_PROBE_TOOL])
            caps.tool_results = out is not None and "probe result" in out
        return caps, rendered_call, tools_prompt

    # ---- rendering -----------------------------------------------------------------------------------------

    def _render(self, rows: list[dict[str, Any]], **extra: Any) -> str:
        variables = {
            "messages": rows,
            "add_generation_prompt": True,
            "bos_token": self._bos,
            "eos_token": self._eos,
            # Fireworks' FireFunction templates take the tools as JSON text and the date, as their API passes them.
            "functions": json.dumps(extra.get("tools", []), indent=2),
            "datetime": datetime.datetime.now(datetime.UTC).strftime("%b %d %Y %H:%M:%S GMT"),
        }
        return self._env.render(self._template, {**variables, **extra})

    def rows(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()) -> list[dict[str, Any]]:
        """The conversation as the template will see it, adapted to what it accepts."""
        caps = self.caps
        rows: list[dict[str, Any]] = []
        for m in messages:
            role = "system" if m.role == "developer" else m.role  # OpenAI's newer name; templates know the older
            if m.tool_calls and self.native_calls:
                calls = [(c.name, c.arguments or "{}", c.id) for c in m.tool_calls]
                rows.append(_calls_row(caps, *calls, content=m.content))
            elif m.tool_calls and self.text_calls:
                written = toolsyntax.text_calls(self.tool_format, [(c.name, c.arguments) for c in m.tool_calls])
                rows.append({"role": role, "content": m.content + written})
            elif m.tool_calls:
                text = (_described_call(c.name, c.arguments) for c in m.tool_calls)
                rows.append({"role": role, "content": "\n".join(filter(None, [m.content, *text]))})
            elif role == "tool" and (self.native_calls or self.text_calls) and caps.tool_results:
                call_id = m.tool_call_id or ""
                row = {
                    "role": "tool",
                    "content": m.content,
                    "tool_call_id": _short_id(call_id) if caps.short_ids else call_id,
                }
                rows.append(row)
            elif role == "tool":
                rows.append({"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"})
            else:
                rows.append({"role": role, "content": m.content})
            if m.reasoning and role == "assistant":  # the names templates read it under (Qwen 3, gpt-oss, LFM2.5...)
                rows[-1] = {**rows[-1], "reasoning_content": m.reasoning, "thinking": m.reasoning}
        if tools and not self.knows_tools:
            described = "\n".join(json.dumps(_tool_schema(t)) for t in tools)
            prompt = toolformat.TOOLS_PROMPTS.get(self.tool_format, TOOL_PROMPT)
            prompt = prompt.format(tools=described, open=TOOL_OPEN, close=TOOL_CLOSE)
            if rows and rows[0]["role"] == "system":
                rows[0] = {"role": "system", "content": f"{rows[0]['content']}\n\n{prompt}"}
            else:
                rows.insert(0, {"role": "system", "content": prompt})
        if not caps.system:
            rows = _fold_system(rows)
        if caps.alternation:
            rows = _merge_runs(rows)
        if caps.after_result != "as_is":
            rows = _after_results(rows, caps.after_result)
        return rows

    def render(
        self, messages: Sequence[ChatMessage], tools: Sequence[Tool] = (), effort: reasoning.Effort | None = None
    ) -> str:
        """The prompt; `effort` reaches templates that take one (enable_thinking, reasoning_effort)."""
        rows = self.rows(messages, tools)
        extra: dict[str, Any] = reasoning.variables(self.reasoning, effort)
        if tools and self.knows_tools:
            extra["tools"] = [_tool_schema(t) for t in tools]
        text = self._render_checked(rows, extra)
        told = toolsyntax.SYNTAX_PROMPTS.get(self.tool_format) if tools and self.text_calls else None
        if told is not None and toolsyntax.detect_prompt(text) != self.tool_format:
            # The template left its syntax sentence out (Granite 3.3 does under a caller's system message): the
            # model would see tools with no word on how to call them, so herd says it in the system turn (as llama.cpp
            # describes the call syntax itself to a model whose template does not).
            text = self._render_checked(_with_system(rows, told), extra)
        if self._adds_bos and self._bos and text.startswith(self._bos):
            text = text[len(self._bos) :]
        return text

    def _render_checked(self, rows: list[dict[str, Any]], extra: dict[str, Any]) -> str:
        try:
            return self._render(rows, **extra)
        except _Refused as exc:
            raise InvalidRequest(f"chat template: {exc}", param="messages") from exc
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise InvalidRequest(f"the model's chat template rejected these messages: {exc}", param="messages") from exc


def _with_system(rows: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """`text` at the end of the leading system turn (one of its own when there is none)."""
    if rows and rows[0]["role"] == "system":
        return [{**rows[0], "content": f"{rows[0]['content']}\n\n{text}"}, *rows[1:]]
    return [{"role": "system", "content": text}, *rows]


def _described_call(name: str, arguments: str) -> str:
    return f'{TOOL_OPEN}{{"name": {json.dumps(name)}, "arguments": {arguments or "{}"}}}{TOOL_CLOSE}'


def _call(name: str, arguments: str, call_id: str, as_text: bool) -> dict[str, Any]:
    args: Any = arguments if as_text else _arguments(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _calls_row(caps: Caps, *calls: tuple[str, str, str], content: str = "") -> dict[str, Any]:
    ids = (_short_id(call_id) if caps.short_ids else call_id for _, _, call_id in calls)
    rows = [
        _call(name, arguments, i, caps.string_arguments) for (name, arguments, _), i in zip(calls, ids, strict=True)
    ]
    return {"role": "assistant", "content": content, "tool_calls": rows}


def _call_row(name: str, arguments: str, call_id: str, as_text: bool, content: str = "") -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": [_call(name, arguments, call_id, as_text)]}


def _short_id(call_id: str) -> str:
    """A 9-character alphanumeric id, the same for the same call id (Mistral's templates check the shape)."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()
    return "".join(c if i % 2 else c.upper() for i, c in enumerate(digest[:9]))


def _fold_system(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System turns go in front of the next user turn (Gemma's templates refuse a system role)."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for row in rows:
        if row["role"] == "system":
            pending.append(row["content"])
        elif row["role"] == "user" and pending:
            out.append({**row, "content": "\n\n".join([*pending, row["content"]])})
            pending = []
        else:
            out.append(row)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


def _merge_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive user (or plain assistant) turns become one, for templates that insist on alternation."""
    out: list[dict[str, Any]] = []
    for row in rows:
        last = out[-1] if out else None
        if (
            last is not None
            and last["role"] == row["role"]
            and row["role"] in ("user", "assistant")
            and "tool_calls" not in last
            and "tool_calls" not in row
        ):
            out[-1] = {**last, "content": f"{last['content']}\n\n{row['content']}"}
        else:
            out.append(row)
    return out


def _after_results(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """A user turn right after a tool result, for templates that refuse it there (Mistral's alternation rule)."""
    out: list[dict[str, Any]] = []
    for row in rows:
        if row["role"] == "user" and out and out[-1]["role"] == "tool" and mode != "as_is":
            if mode == "into_result":
                out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{row['content']}"}
                continue
            out.append({"role": "assistant", "content": ""})
        out.append(row)
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text  # templates print it either way


def _tool_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": _parameters(tool.parameters)},
    }


def _parameters(schema: str) -> Any:
    """A tool's schema; an empty one as an object without properties, which templates iterate over."""
    parsed = json.loads(schema)
    return parsed if parsed else {"type": "object", "properties": {}}
