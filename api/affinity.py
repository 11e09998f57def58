"""Prefix-cache affinity: digests of a prompt's leading text, so that the dispatcher sends a request to the worker that
served the same prefix before (its llama.cpp prefix cache then skips that prefill).

Two kinds of digest, each a key of channels.affinity naming the worker that last served it:
    conversation   chat: the digest of the messages. A follow-up turn carries the earlier turn's messages, its reply
                   and a new user message, so it looks up the digest of its messages without the last two.
    leading blocks the digest of the prompt's first 256, 1024, 4096 and 16384 characters (those it has in full):
                   a shared system prompt or document, or a completion prompt extended turn after turn. The longest
                   one known wins.
The text is the messages' roles and contents joined with separators that cannot occur in them, so a conversation's
text is a prefix of its follow-up's.
"""

from __future__ import annotations

import hashlib

from herd.inference import ChatMessage, EmbeddingRequest, GenerationRequest

BLOCKS = (16384, 4096, 1024, 256)  # longest first: the order in which a lookup tries them


def _text(messages: tuple[ChatMessage, ...]) -> str:
    return "".join(f"\x1e{m.role}\x1f{m.content}" for m in messages)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def digests(request: GenerationRequest | EmbeddingRequest) -> tuple[list[str], list[str]]:
    """(lookup, store): the digests to look for, best first, and the ones the chosen worker then holds."""
    if isinstance(request, EmbeddingRequest):
        return [], []
    if request.messages is not None:
        text = _text(request.messages)
        lookup = [_digest("c" + _text(request.messages[:-2]))] if len(request.messages) > 2 else []
        store = [_digest("c" + text)]
    else:
        text, lookup, store = request.prompt or "", [], []
    blocks = [_digest(f"b{size}" + text[:size]) for size in BLOCKS if len(text) >= size]
    return lookup + blocks, store + blocks
