"""The one table of which scope opens which route, by method and path. A path the table does not name is closed."""

from __future__ import annotations

from herd.api.auth.principal import SCOPE_BATCH, SCOPE_INFERENCE, SCOPE_MODELS_ADMIN, SCOPE_MODELS_READ

OPEN = ""  # no credential needed
CLOSED = "\x00closed"  # no scope opens it: a route nobody listed yet stays shut until someone does
ANY = "*"  # any method

# (method, path or prefix ending in "*", scope). First match wins, so exact paths come before prefixes.
RULES: tuple[tuple[str, str, str], ...] = (
    # Probes and discovery stay open so load balancers and clients can find the server.
    ("GET", "/healthz", OPEN),
    ("GET", "/readyz", OPEN),
    ("GET", "/", OPEN),
    ("HEAD", "/", OPEN),
    ("GET", "/api/version", OPEN),
    ("GET", "/openapi.json", OPEN),  # herd's OpenAPI document (api/openapi.py)
    ("GET", "/chat", OPEN),  # the chat page's static files (api/routes/web.py); its API calls carry the key
    ("GET", "/chat/*", OPEN),
    ("GET", "/metrics", OPEN),  # unless HERD_METRICS_SCOPE names a scope (see `required`)
    # The built-in issuer: the token endpoint authenticates clients itself; keys and metadata are public.
    ("POST", "/oauth/token", OPEN),
    ("GET", "/.well-known/openid-configuration", OPEN),
    ("GET", "/.well-known/oauth-authorization-server", OPEN),
    ("GET", "/.well-known/jwks.json", OPEN),
    # OpenAI
    ("POST", "/v1/chat/completions", SCOPE_INFERENCE),
    ("POST", "/v1/completions", SCOPE_INFERENCE),
    ("POST", "/v1/embeddings", SCOPE_INFERENCE),
    ("POST", "/v1/responses", SCOPE_INFERENCE),
    (ANY, "/v1/responses/*", SCOPE_INFERENCE),  # retrieve, resume, cancel, delete, input_items: the owner's
    ("POST", "/v1/ui/chat", SCOPE_INFERENCE),  # the AI SDK's UI message stream (useChat)
    (ANY, "/v1/ui/chat/*", SCOPE_INFERENCE),  # its reconnect (GET) and the stop of a resumable answer (DELETE)
    ("GET", "/v1/models", SCOPE_MODELS_READ),
    ("GET", "/v1/models/*", SCOPE_MODELS_READ),
    ("DELETE", "/v1/models/*", SCOPE_MODELS_ADMIN),
    (ANY, "/v1/files", SCOPE_BATCH),
    (ANY, "/v1/files/*", SCOPE_BATCH),
    (ANY, "/v1/batches", SCOPE_BATCH),
    (ANY, "/v1/batches/*", SCOPE_BATCH),
    # herd's queue view shows what the caller's inference traffic is waiting behind.
    ("GET", "/v1/queue", SCOPE_INFERENCE),
    ("GET", "/v1/queue/*", SCOPE_INFERENCE),
    # Ollama
    ("POST", "/api/chat", SCOPE_INFERENCE),
    ("POST", "/api/generate", SCOPE_INFERENCE),
    ("POST", "/api/embed", SCOPE_INFERENCE),
    ("POST", "/api/embeddings", SCOPE_INFERENCE),
    ("GET", "/api/tags", SCOPE_MODELS_READ),
    ("POST", "/api/show", SCOPE_MODELS_READ),
    ("GET", "/api/ps", SCOPE_MODELS_READ),
    ("POST", "/api/pull", SCOPE_MODELS_ADMIN),
    ("POST", "/api/push", SCOPE_MODELS_ADMIN),
    ("POST", "/api/create", SCOPE_MODELS_ADMIN),
    ("POST", "/api/copy", SCOPE_MODELS_ADMIN),
    ("DELETE", "/api/delete", SCOPE_MODELS_ADMIN),
    (ANY, "/api/blobs/*", SCOPE_MODELS_ADMIN),
)


def required(method: str, path: str, metrics_scope: str = "") -> str:
    """The scope `method path` needs: OPEN, a scope name, or CLOSED when no rule names it."""
    if path == "/metrics" and metrics_scope and method in ("GET", "HEAD"):
        return metrics_scope
    if method == "HEAD":  # HEAD is GET without a body: the same door
        head = _match("HEAD", path)
        return head if head != CLOSED else _match("GET", path)
    return _match(method, path)


def _match(method: str, path: str) -> str:
    for rule_method, pattern, scope in RULES:
        if rule_method not in (ANY, method):
            continue
        if path == pattern or (pattern.endswith("*") and path.startswith(pattern[:-1])):
            return scope
    return CLOSED
