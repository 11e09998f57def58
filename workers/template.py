"""Chat prompts from the GGUF's own Jinja chat template, rendered in a sandbox (no template can reach Python)."""

from __future__ import annotations

from collections.abc import Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.errors import InvalidRequest
from shared.inference import ChatMessage

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

    def render(self, messages: Sequence[ChatMessage]) -> str:
        # "developer" is OpenAI's newer name for "system"; model templates only know the latter.
        rows = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]
        try:
            return self._template.render(
                messages=rows, add_generation_prompt=True, bos_token=self._bos, eos_token=self._eos
            )
        except InvalidRequest:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template rejected these messages: {exc}", param="messages") from exc
