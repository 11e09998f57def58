"""Reasoning before the answer: which way a chat template's model writes it, and what a request asks of it.

    think     <think>...</think> then the answer                  DeepSeek R1, Qwen 3, QwQ, SmolLM3, ...
              (R1-style templates open `<think>` in the generation prompt: the output starts inside reasoning)
    harmony   <|channel|>analysis<|message|>...<|end|> then the final channel     gpt-oss

The worker reads the format from the template's text (as Ollama and llama.cpp do) and, per request, from the prompt
it rendered whether the output starts inside reasoning; it names that on a choice's first delta
(`TokenDelta.reasoning`: "think", "thinking" for already inside, or "harmony"). The API splits the text
(api/translate/reasoning.py). A request's effort reaches templates that take one: Qwen 3's `enable_thinking`,
gpt-oss's `reasoning_effort`.
"""

from __future__ import annotations

from typing import Any, Literal

ReasoningFormat = Literal["think", "harmony"]
# What a request asks: "off" (no reasoning: Ollama's think=false), "on" (the model's default depth), or a level.
Effort = Literal["off", "on", "low", "medium", "high"]
EFFORTS: tuple[Effort, ...] = ("off", "on", "low", "medium", "high")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def detect(template: str) -> ReasoningFormat | None:
    """How the model of a chat template (its source text) reasons, if it does."""
    if "<|channel|>" in template and "analysis" in template:
        return "harmony"
    if THINK_OPEN in template or "enable_thinking" in template:
        return "think"
    return None


def start(fmt: ReasoningFormat | None, prompt: str) -> str | None:
    """The mode the API's splitter starts in for a rendered prompt: "thinking" when the prompt ends with an opened
    `<think>` (the answer begins inside reasoning), else the format itself."""
    if fmt == "think" and prompt.rstrip().endswith(THINK_OPEN):
        return "thinking"
    return fmt


def variables(fmt: ReasoningFormat | None, effort: Effort | None) -> dict[str, Any]:
    """Template variables for a request's effort, for a template that reasons (none for one that does not)."""
    if fmt is None:
        return {}
    found: dict[str, Any] = {"enable_thinking": effort != "off"}  # llama.cpp's default too: thinking on
    if effort in ("low", "medium", "high"):
        found["reasoning_effort"] = effort
    elif effort == "off" and fmt == "harmony":
        found["reasoning_effort"] = "low"  # gpt-oss cannot stop reasoning; the least there is (its text is dropped)
    return found


def effort(asked: bool | str | None) -> Effort | None:
    """A request's reasoning setting as an Effort: Ollama's think (a bool or a level), OpenAI's reasoning_effort
    ("none" and "minimal" too); None when the request leaves it to the model, or names no level herd knows."""
    if asked is None or asked == "":
        return None
    if isinstance(asked, bool):
        return "on" if asked else "off"
    return _LEVELS.get(asked)


_LEVELS: dict[str, Effort] = {"none": "off", "minimal": "low", "low": "low", "medium": "medium", "high": "high"}
