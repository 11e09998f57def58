"""Who is calling: the Principal that authentication attaches to a connection, and how routes read it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.connection import ASGIConnection

# Scopes, by what they open. The auth middleware maps routes to these; routes never check scopes themselves.
SCOPE_MODELS_READ = "models:read"  # list/show/tags/ps
SCOPE_INFERENCE = "inference"  # chat, completions, embeddings, Ollama generate/chat/embed
SCOPE_BATCH = "batch"  # files and batches
SCOPE_MODELS_ADMIN = "models:admin"  # pull, create, copy, delete, blob upload
ALL_SCOPES = frozenset({SCOPE_MODELS_READ, SCOPE_INFERENCE, SCOPE_BATCH, SCOPE_MODELS_ADMIN})


class Principal(msgspec.Struct, frozen=True):
    """An authenticated caller. `subject` is stable per caller and is what owns files and batches."""

    subject: str
    scopes: frozenset[str]
    via: str  # "jwt", "api_key" or "none" (auth off)


# With auth off every caller is this one principal, holding every scope.
ANONYMOUS = Principal(subject="anonymous", scopes=ALL_SCOPES, via="none")


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller of this request: what the auth middleware put in scope["auth"], else ANONYMOUS."""
    auth = connection.scope.get("auth")
    return auth if isinstance(auth, Principal) else ANONYMOUS
