"""`herd token`: an access token from an OAuth2 token endpoint by the client-credentials grant (RFC 6749 4.4), with
authlib's OAuth2 client (client_secret_basic, RFC 6749 error responses). Works against herd's built-in issuer
(/oauth/token) and any IdP; scripts put the printed token in `Authorization: Bearer ...`."""

from __future__ import annotations

import os
import sys

from authlib.integrations.httpx_client import OAuth2Client, OAuthError
from httpx import HTTPError


def token(url: str, client_id: str, scope: str, from_stdin: bool) -> int:
    """Print the access token; the secret comes from standard input or HERD_CLIENT_SECRET, never from argv
    (where every user of the machine could read it in the process list)."""
    secret = sys.stdin.readline().strip() if from_stdin else os.environ.get("HERD_CLIENT_SECRET", "")
    if not secret:
        print("herd token: no client secret (--stdin, or HERD_CLIENT_SECRET)", file=sys.stderr)
        return 1
    scopes = " ".join(part for part in scope.replace(",", " ").split() if part) or None
    with OAuth2Client(client_id, secret, token_endpoint_auth_method="client_secret_basic", timeout=30) as client:
        try:
            reply = client.fetch_token(url, grant_type="client_credentials", scope=scopes)
        except OAuthError as exc:
            print(f"herd token: {exc.error}: {exc.description}", file=sys.stderr)
            return 1
        except HTTPError as exc:
            print(f"herd token: {url}: {exc}", file=sys.stderr)
            return 1
    print(reply["access_token"])
    return 0
