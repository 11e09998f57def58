"""Chat prompts from the GGUF's own Jinja chat template, rendered in a sandbox (no template can reach Python)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jinja2
from herd.errors import InvalidRequest
from herd.inference import ChatMessage, Tool
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Tool calls are written the way Hermes, Qwen and SmolLM3 models write them; the API's tool grammar and parser
# use the same tags (api/grammar.py, api/translate/tools.py).
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_PROMPT = (
    "You can call functions. The functions are described in JSON inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one JSON object per call, each on its own line inside {open}{close} tags:\n"
    '{open}{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}{close}\n'
    "A function's result comes back in a <tool_response></tool_response> block."
)

# ChatML: the fallback when a GGUF carries no template (SmolLM2's own template is ChatML too).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}", param="messages")


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source or CHATML)
        self._bos = bos_token
        self._eos = eos_token
        # A template that reads `tools` renders them (and tool calls and results) in the model's own format.
        self.knows_tools = source is not None and "tools" in source and "tool_calls" in source

    @staticmethod
    def _native(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for m in messages:
            row: dict[str, Any] = {"role": _role(m), "content": m.content}
            if m.tool_calls:
                row["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                row["tool_call_id"] = m.tool_call_id
            rows.append(row)
        return rows

    @staticmethod
    def _described(messages: Sequence[ChatMessage], tools: Sequence[Tool]) -> list[dict[str, Any]]:
        """For templates that know no tools: describe them in the system prompt, calls and results as text."""
        rows: list[dict[str, Any]] = []
        for m in messages:
            content = m.content
            if m.tool_calls:
                calls = (
                    f'{TOOL_OPEN}{{"name": {json.dumps(c.name)}, "arguments": {c.arguments or "{}"}}}{TOOL_CLOSE}'
                    for c in m.tool_calls
                )
                content = "\n".join(filter(None, [content, *calls]))
            if m.role == "tool":
                rows.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            else:
                rows.append({"role": _role(m), "content": content})
        if tools:
            described = "\n".join(json.dumps(_tool_schema(t)) for t in tools)
            prompt = TOOL_PROMPT.format(tools=described, open=TOOL_OPEN, close=TOOL_CLOSE)
            if rows and rows[0]["role"] == "system":
                rows[0] = {"role": "system", "content": f"{rows[0]['content']}\n\n{prompt}"}
            else:
                rows.insert(0, {"role": "system", "content": prompt})
        return rows

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()) -> str:
        rows = self._native(messages) if self.knows_tools else self._described(messages, tools)
        extra: dict[str, Any] = {}
        if tools and self.knows_tools:
            extra["tools"] = [_tool_schema(t) for t in tools]
        try:
            return self._template.render(
                messages=rows, add_generation_prompt=True, bos_token=self._bos, eos_token=self._eos, **extra
            )
        except InvalidRequest:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template rejected these messages: {exc}", param="messages") from exc


def _role(message: ChatMessage) -> str:
    # "developer" is OpenAI's newer name for "system"; model templates only know the latter.
    return "system" if message.role == "developer" else message.role


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text  # templates print it either way


def _tool_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": json.loads(tool.parameters)},
    }
