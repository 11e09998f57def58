"""Static credentials as configured: API keys and the built-in issuer's clients, stored as SHA-256 hashes.

One entry format for both (HERD_API_KEYS / HERD_API_KEYS_FILE, HERD_AUTH_CLIENTS / HERD_AUTH_CLIENTS_FILE):

    [name=]<sha256 hex of the secret>:<scope>,<scope>,...

entries separated by `;` or newlines, `#` starting a comment line. Secrets are random (see `new_secret`), so a
plain SHA-256 is enough: a slow password hash would only protect guessable secrets, and costs every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

import msgspec

_HEX = re.compile(r"^[0-9a-f]{64}$")


class Credential(msgspec.Struct, frozen=True):
    name: str  # the principal's subject (an API key's name, a client's id)
    digest: str  # sha256 hex of the secret
    scopes: frozenset[str]


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str = "sk-herd-") -> str:
    return prefix + secrets.token_urlsafe(32)


def entry(name: str, secret: str, scopes: list[str]) -> str:
    """The configuration line for `secret` (which itself is never stored)."""
    return f"{name}={digest(secret)}:{','.join(scopes)}"


def parse(text: str, source: str) -> list[Credential]:
    """Entries from a setting's text; a malformed entry is an error that names its source, never a silent skip."""
    found = []
    for raw in re.split(r"[;\n]", text):
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        head, sep, scopes = item.partition(":")
        name, eq, hexdigest = head.rpartition("=") if "=" in head else ("", "", head)
        hexdigest = hexdigest.strip().lower()
        if not sep or not _HEX.match(hexdigest) or (eq and not name.strip()):
            # The entry itself is not echoed: someone may have pasted a secret instead of its hash.
            raise ValueError(f"{source}: an entry is not `[name=]<sha256 hex>:<scopes>` (see `herd key --help`)")
        found.append(
            Credential(
                name=name.strip() or f"key-{hexdigest[:12]}",
                digest=hexdigest,
                scopes=frozenset(s.strip() for s in scopes.split(",") if s.strip()),
            )
        )
    return found


def load(inline: str, file: str, source: str) -> list[Credential]:
    text = inline
    if file:
        text += "\n" + Path(file).read_text()
    return parse(text, source)
