"""Internal events of /v1/completions requests -> legacy Completion chunks and the whole Completion.

A list prompt is one internal request per prompt, each with n choices; choice i of prompt p is index p * n + i.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from herd.api.translate.openai_replies import fingerprint, speculation, usage
from herd.api.wire import openai as wire
from herd.inference import Finished, TokenDelta, TokenLogprob, Usage
from msgspec import UNSET


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    offset: int = 0  # characters of text so far (the legacy logprobs' text_offset)
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


def _piece(item: bytes) -> str:
    return item.decode("utf-8", "replace")


class CompletionAssembler:
    def __init__(
        self,
        request_id: str,
        model: str,
        created: int,
        prompts: list[str],
        n: int,
        logprobs: bool,
        echo: bool,
        include_usage: bool,
    ) -> None:
        self._id = f"cmpl-{request_id}"
        self._model = model
        self._fingerprint = fingerprint(model)
        self._created = created
        self._n = n
        self._logprobs = logprobs
        self._include_usage = include_usage
        self._prompts = prompts if echo else [""] * len(prompts)
        self._choices = [_Choice() for _ in range(len(prompts) * n)]
        for i, choice in enumerate(self._choices):
            head = self._prompts[i // n]
            if head:
                choice.text.append(head)
                choice.offset = len(head)

    def _wrap(self, choices: list[wire.CompletionChoice]) -> wire.Completion:
        return wire.Completion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=choices,
            usage=None if self._include_usage else UNSET,
            system_fingerprint=self._fingerprint,
        )

    def opening(self) -> list[wire.Completion]:
        """With echo, each choice's stream opens with its prompt."""
        return [
            self._wrap([wire.CompletionChoice(index=i, text=self._prompts[i // self._n], finish_reason=None)])
            for i in range(len(self._choices))
            if self._prompts[i // self._n]
        ]

    def _record(self, choice: _Choice, items: tuple[TokenLogprob, ...]) -> wire.CompletionLogprobs | None:
        if not self._logprobs:
            return None
        part = wire.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for item in items:
            token = _piece(item.piece)
            part.tokens.append(token)
            part.token_logprobs.append(item.logprob)
            part.top_logprobs.append({_piece(p): lp for p, lp in item.top})
            part.text_offset.append(choice.offset)
            choice.offset += len(token)
        choice.tokens.extend(part.tokens)
        choice.token_logprobs.extend(part.token_logprobs)
        choice.top_logprobs.extend(part.top_logprobs)
        return part

    def feed(self, request_index: int, event: TokenDelta | Finished) -> list[wire.Completion]:
        index = request_index * self._n + event.index
        choice = self._choices[index]
        if isinstance(event, Finished):
            choice.usage, choice.finish_reason = event.usage, event.finish_reason
            return [self._wrap([wire.CompletionChoice(index=index, text="", finish_reason=event.finish_reason)])]
        logprobs = self._record(choice, event.logprobs)
        if not event.text and not event.logprobs:
            return []
        choice.text.append(event.text)
        return [
            self._wrap([wire.CompletionChoice(index=index, text=event.text, finish_reason=None, logprobs=logprobs)])
        ]

    def usage(self) -> wire.CompletionUsage:
        # Every choice's usage has its prompt: count each prompt once (choice 0 of it).
        used = [c.usage for c in self._choices if c.usage is not None]
        prompts = [c.usage.prompt_tokens for c in self._choices[:: self._n] if c.usage is not None]
        whole = usage([Usage(prompt_tokens=0, completion_tokens=u.completion_tokens) for u in used])
        whole.speculation = speculation(used)
        whole.prompt_tokens = sum(prompts)
        whole.total_tokens = whole.prompt_tokens + whole.completion_tokens
        whole.prompt_tokens_details.cached_tokens = sum(
            c.usage.cached_tokens for c in self._choices[:: self._n] if c.usage is not None
        )
        return whole

    def usage_chunk(self) -> wire.Completion:
        return wire.Completion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[],
            usage=self.usage(),
            system_fingerprint=self._fingerprint,
        )

    def completion(self) -> wire.Completion:
        choices = []
        for i, c in enumerate(self._choices):
            logprobs = (
                wire.CompletionLogprobs(c.tokens, c.token_logprobs, c.top_logprobs, self._offsets(c))
                if self._logprobs
                else None
            )
            choices.append(
                wire.CompletionChoice(index=i, text="".join(c.text), finish_reason=c.finish_reason, logprobs=logprobs)
            )
        return wire.Completion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=choices,
            usage=self.usage(),
            system_fingerprint=self._fingerprint,
        )

    @staticmethod
    def _offsets(choice: _Choice) -> list[int]:
        offsets, at = [], choice.offset - sum(len(t) for t in choice.tokens)
        for token in choice.tokens:
            offsets.append(at)
            at += len(token)
        return offsets
