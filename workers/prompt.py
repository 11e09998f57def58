"""A request's prompt as the engine takes it: chat template or plain text, infill, earlier context, tokenized,
checked against the context length, and cut into its prefill chunks (workers/slots.py)."""

from __future__ import annotations

from herd import reasoning
from herd.errors import ContextLengthExceeded, InvalidRequest
from herd.workers.protocol import EngineLike
from herd.workers.sequence import Seq
from herd.workers.slots import prompt_chunks
from herd.workers.template import ChatTemplate


class Prompts:
    """Fills in a sequence's prompt, reply limit and chunk ends at admission; raises the ServiceError to send."""

    def __init__(self, engine: EngineLike, template: ChatTemplate, max_tokens_cap: int, prefill_chunk: int) -> None:
        self._engine = engine
        self._template = template
        self._cap = max_tokens_cap
        self._prefill_chunk = prefill_chunk

    def prepare(self, seq: Seq) -> None:
        req, engine = seq.req, self._engine
        if req.messages is not None:
            text, add_special = self._template.render(req.messages, req.tools, req.reasoning), engine.add_bos
            seq.family.reasoning = reasoning.start(self._template.reasoning, text)
        else:
            text, add_special = req.prompt or "", True
        if req.suffix is not None:
            seq.prompt = self._infill(text, req.suffix)
        elif req.context_tokens:
            if max(req.context_tokens) >= engine.n_vocab:
                raise InvalidRequest("context holds token ids this model does not have", param="context")
            # The earlier exchange already begins the text (with its BOS, if any): the new part adds none.
            seq.prompt = [*req.context_tokens, *engine.tokenize(text, add_special=False)]
        else:
            seq.prompt = engine.tokenize(text, add_special=add_special)
        if not seq.prompt and engine.bos_id >= 0:
            seq.prompt = [engine.bos_id]  # an empty completion prompt continues from the start of a text
        if not seq.prompt:
            raise InvalidRequest("the prompt is empty", param="prompt")
        n_prompt, n_ctx = len(seq.prompt), engine.n_ctx_seq
        room = n_ctx - n_prompt
        if (req.max_tokens is not None and req.max_tokens > room and not req.fit_context) or room < 1:
            asked = req.max_tokens or 1
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{n_prompt + asked} tokens ({n_prompt} in the messages, {asked} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages" if req.messages is not None else "prompt",
            )
        seq.max_tokens = min(req.max_tokens or room, room, self._cap)
        seq.ends = prompt_chunks(seq.prompt, engine, self._prefill_chunk)

    def _infill(self, prefix: str, suffix: str) -> list[int]:
        engine = self._engine
        fim = engine.infill_tokens()
        if fim is None:
            raise InvalidRequest(
                "this model has no fill-in-the-middle tokens, so 'suffix' is not supported", param="suffix"
            )
        pre, suf, mid = fim
        bos = [engine.bos_id] if engine.add_bos and engine.bos_id >= 0 else []
        body = engine.tokenize(prefix, add_special=False)
        return [*bos, pre, *body, suf, *engine.tokenize(suffix, add_special=False), mid]
