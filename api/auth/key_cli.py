"""The `herd` command's auth parts: `herd key`, and the check of the auth settings before `serve` or `api` starts."""

from __future__ import annotations

import sys

from herd.api.auth import credentials
from herd.config import Settings


def key(name: str, scopes: str, from_stdin: bool) -> int:
    """Print a new secret once and its configuration entry (or only the entry of a secret read from stdin)."""
    secret = sys.stdin.readline().strip() if from_stdin else credentials.new_secret()
    if not secret:
        print("herd key: no secret on standard input", file=sys.stderr)
        return 1
    if not from_stdin:
        print(f"secret (shown once; herd stores only its hash): {secret}")
    print(credentials.entry(name, secret, [s.strip() for s in scopes.split(",") if s.strip()]))
    return 0


def check_settings(settings: Settings) -> None:
    """Raise ValueError or OSError for a mistake in the auth settings, so that the start stops with one line
    rather than a traceback from inside the API."""
    settings.auth_enabled()
    settings.limits_for()
    credentials.load(settings.api_keys, settings.api_keys_file, "HERD_API_KEYS")
    credentials.load(settings.auth_clients, settings.auth_clients_file, "HERD_AUTH_CLIENTS")
    if settings.auth_jwks_url and not settings.auth_issuer:
        raise ValueError("HERD_AUTH_JWKS_URL needs HERD_AUTH_ISSUER (the exact `iss` of the tokens)")
