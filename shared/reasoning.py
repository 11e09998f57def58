"""Reasoning before the answer: which way a chat template's model writes it, and what a request asks of it.

    think     <think>...</think> then the answer                  DeepSeek R1, Qwen 3, QwQ, SmolLM3, ...
              (R1-style templates open `<think>` in the generation prompt: the output starts inside reasoning)
    harmony   <|channel|>analysis<|message|>...<|end|> then the final channel     gpt-oss
    command-r <|START_THINKING|>...<|END_THINKING|> then the response or actions   Command R7B, Command A (Cohere2MoE)
    seed      <seed:think>...</seed:think> then the answer                  ByteDance Seed-OSS
    gemma4    <|channel>thought ...<channel|> then the answer               Gemma 4

The worker reads the format from the template's text (as Ollama and llama.cpp do) and, per request, from the prompt
it rendered whether the output starts inside reasoning; it names that on a choice's first delta
(`TokenDelta.reasoning`: the format, or "thinking" / "<format>-thinking" for already inside). The API splits the text
(api/translate/reasoning.py). A request's effort reaches templates that take one: Qwen 3's `enable_thinking`,
gpt-oss's `reasoning_effort`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

ReasoningFormat = Literal["think", "harmony", "command-r", "seed", "gemma4"]
# What a request asks: "off" (no reasoning: Ollama's think=false), "on" (the model's default depth), or a level.
Effort = Literal["off", "on", "low", "medium", "high"]
EFFORTS: tuple[Effort, ...] = ("off", "on", "low", "medium", "high")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# The block that holds the reasoning, for the formats that write one before the answer.
BLOCKS: dict[str, tuple[str, str]] = {
    "think": (THINK_OPEN, THINK_CLOSE),
    "command-r": ("<|START_THINKING|>", "<|END_THINKING|>"),
    "seed": ("<seed:think>", "</seed:think>"),
    "gemma4": ("<|channel>thought", "<channel|>"),
}

_MARKED: tuple[ReasoningFormat, ...] = ("gemma4", "seed", "command-r")
# The control tokens among a block's markers (Gemma 4's opener is <|channel> then the word `thought`).
_SHOWN: dict[str, tuple[str, ...]] = {"gemma4": ("<|channel>", "<channel|>")}


def detect(template: str) -> ReasoningFormat | None:
    """How the model of a chat template (its source text) reasons, if it does."""
    if "<|channel|>" in template and "analysis" in template:
        return "harmony"
    for fmt in _MARKED:  # before `think`: their templates take enable_thinking too
        if BLOCKS[fmt][0] in template:
            return fmt
    if THINK_OPEN in template or "enable_thinking" in template:
        return "think"
    return None


def start(fmt: ReasoningFormat | None, prompt: str) -> str | None:
    """The mode the API's splitter starts in for a rendered prompt: "thinking" (`<think>`) or "<format>-thinking"
    when the prompt ends with an opened block (the answer begins inside reasoning), else the format itself."""
    if fmt in BLOCKS and prompt.rstrip().endswith(BLOCKS[fmt][0]):
        return "thinking" if fmt == "think" else f"{fmt}-thinking"
    return fmt


def block(mode: str) -> tuple[tuple[str, str], bool] | None:
    """A mode named on a delta (`start`) -> the reasoning block's markers and whether the text starts inside it."""
    fmt = "think" if mode == "thinking" else mode.removesuffix("-thinking")
    return (BLOCKS[fmt], mode.endswith("thinking")) if fmt in BLOCKS else None


def marker_tokens(fmt: ReasoningFormat | None, tokenize: Callable[[str, bool], list[int]]) -> frozenset[int]:
    """The ids of the reasoning block's markers that are single tokens (control tokens the text must show)."""
    markers: tuple[str, ...] = _SHOWN.get(fmt or "") or BLOCKS.get(fmt or "") or ()
    ids = (tokenize(marker, False) for marker in markers)
    return frozenset(found[0] for found in ids if len(found) == 1)


def variables(fmt: ReasoningFormat | None, effort: Effort | None) -> dict[str, Any]:
    """Template variables for a request's effort, for a template that reasons (none for one that does not)."""
    if fmt is None:
        return {}
    found: dict[str, Any] = {"enable_thinking": effort != "off"}  # llama.cpp's default too: thinking on
    if effort in ("low", "medium", "high"):
        found["reasoning_effort"] = effort
    elif effort == "off" and fmt == "harmony":
        found["reasoning_effort"] = "low"  # gpt-oss cannot stop reasoning; the least there is (its text is dropped)
    if effort == "off" and fmt == "seed":
        found["thinking_budget"] = 0  # Seed-OSS: a budget of 0 skips the reasoning
    if effort is not None and fmt == "command-r":
        found["reasoning"] = effort != "off"  # Command A's own switch (R7B reads enable_thinking)
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
