"""Tool-call formats of model families, detected from a chat template's text."""

from __future__ import annotations

from typing import Literal

DEEPSEEK_CALLS_BEGIN = "<\uff5ctool\u2581calls\u2581begin\uff5c>"

ToolFormat = Literal["hermes", "llama3", "mistral", "mistral-args", "gpt-oss", "deepseek", "qwen3-coder"]


def detect(template: str) -> ToolFormat:
    if "<|channel|>" in template:
        return "gpt-oss"
    if DEEPSEEK_CALLS_BEGIN in template:
        return "deepseek"
    if "<function=" in template and "<parameter=" in template:
        return "qwen3-coder"
    if "[TOOL_CALLS]" in template:
        return "mistral-args" if "[ARGS]" in template else "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|start_header_id|>" in template and "ipython" in template:
        return "llama3"
    return "hermes"
