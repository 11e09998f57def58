"""The one place client-supplied model names, tags and blob digests are validated (and made canonical).

Ollama's path-traversal CVEs came from names and digests that reached the file system unchecked. herd never turns
a name into a path (a manifest's file name is the sha256 of the canonical name, see api/models/store.py) and only turns
a digest into a path after `parse_digest` accepted it; the patterns here are the first line of defence anyway.
"""

from __future__ import annotations

import re

from herd.errors import InvalidRequest

# A part starts with a letter, digit or '_' (so never '.', '-', '/', '..'), then at most 79 more of [A-Za-z0-9_.-].
# A namespace has no '.'; only a registry host (the first of exactly three parts, like `hf.co`) may have one.
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"
_NAME = re.compile(rf"(?:{_PART}/{_NAMESPACE}/|{_NAMESPACE}/)?{_PART}(?P<tag>:{_PART})?")
_DIGEST = re.compile(r"sha256[:-](?P<hex>[0-9a-f]{64})")
DEFAULT_TAG = "latest"


def canonical_name(name: str) -> str:
    """`[host/][namespace/]model[:tag]` with the tag made explicit (`latest` by default); InvalidRequest otherwise.

    Ollama's clients send `model`, `model:tag` and `namespace/model:tag`; `hf.co/owner/repo:quant` names a pull
    source. `..` anywhere, NUL, '%', '\\', absolute paths and over-long parts never match.
    """
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or ".." in name or len(name) > 250:
        raise InvalidRequest(f"invalid model name {name[:100]!r}", param="model")
    return name if match.group("tag") else f"{name}:{DEFAULT_TAG}"


def split_tag(name: str) -> tuple[str, str]:
    """(`[host/][namespace/]model`, tag) of a canonical name."""
    base, _, tag = name.rpartition(":")
    return base, tag


def parse_digest(digest: str, param: str = "digest") -> str:
    """The 64 lowercase hex characters of `sha256:<hex>` (Ollama's blob routes also accept `sha256-<hex>`)."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise InvalidRequest(f"invalid digest {digest[:100]!r}: expected sha256:<64 hex>", param=param)
    return match.group("hex")
