"""The Jinja environment chat templates render in: Hugging Face's extensions inside a sandbox, bounded per render.

A GGUF's template is code written for Hugging Face's `apply_chat_template`, so it may use what that environment
adds to Jinja: loop controls (`{% break %}`, `{% continue %}`), the `{% generation %}` block, `strftime_now`,
`raise_exception` and a `tojson` that takes json.dumps' keyword arguments and does not HTML-escape. Templates also
mutate what they build (`list.append`, `dict.update`), so the sandbox is Jinja's SandboxedEnvironment (no access
to dunder attributes, internals or unsafe callables) rather than the immutable one. A render is bounded in output
size and time: `range` loops check the clock, `*` and `+` refuse results past the size bound.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment, safe_range

MAX_CHARS = 4 * 1024 * 1024  # a prompt longer than this could never fit a context anyway
MAX_SECONDS = 2.0


class TemplateBudgetExceeded(jinja2.TemplateRuntimeError):
    """A render went past its size or time bound."""


class GenerationExtension(Extension):
    """`{% generation %}...{% endgeneration %}` marks the assistant's part for training masks: renders its body."""

    tags = {"generation"}  # noqa: RUF012 (Extension declares it a plain attribute)

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Hugging Face's tojson: json.dumps' own options, and no HTML escaping (a prompt is not a web page). What
    # `map` and `select` return (iterators) prints as the list it yields, as minja prints it.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys, default=_listed
    )


def _listed(value: Any) -> Any:
    if isinstance(value, Iterator):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class _ClockedRange:
    """A range whose iteration looks at the render's clock (an empty nested loop writes nothing to check on)."""

    def __init__(self, values: range, check: Callable[[], None]) -> None:
        self._values = values
        self._check = check

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> int:
        return self._values[index]

    def __iter__(self) -> Iterator[int]:
        for i, value in enumerate(self._values):
            if i % 1024 == 1023:
                self._check()
            yield value


class _Bound(threading.local):
    deadline = 0.0


class TemplateEnvironment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "+", "**"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, GenerationExtension])
        self._bound = _Bound()
        self.filters["tojson"] = _tojson
        self.globals["strftime_now"] = _strftime_now
        self.globals["range"] = self._range

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise TemplateBudgetExceeded("chat template: an exponent this large is refused")
        if operator == "*":
            sized, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(count, int) and hasattr(sized, "__len__") and len(sized) * count > MAX_CHARS:
                raise TemplateBudgetExceeded("chat template: a repetition past the size bound")
        result = super().call_binop(context, operator, left, right)
        if operator == "+" and hasattr(result, "__len__") and len(result) > MAX_CHARS:
            raise TemplateBudgetExceeded("chat template: a value past the size bound")
        return result

    def _range(self, *args: int) -> _ClockedRange:
        return _ClockedRange(safe_range(*args), self._check_clock)

    def _check_clock(self) -> None:
        if time.monotonic() > self._bound.deadline:
            raise TemplateBudgetExceeded(f"chat template: rendering took longer than {MAX_SECONDS} s")

    def render(self, template: jinja2.Template, variables: dict[str, Any]) -> str:
        """Render with the size and time bounds."""
        self._bound.deadline = time.monotonic() + MAX_SECONDS
        parts: list[str] = []
        size = 0
        for chunk in template.generate(**variables):
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_CHARS:
                raise TemplateBudgetExceeded("chat template: the prompt grew past the size bound")
            self._check_clock()
        return "".join(parts)
