"""The built-in issuer's endpoints: the client-credentials token endpoint, its metadata and its JWKS."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_plus

from herd.api.auth.issuer import Issuer, TokenResponse
from herd.api.routes.common import SMALL_BODY
from herd.errors import InvalidRequest, Unauthenticated
from litestar import Request, Response, get, post
from litestar.datastructures import State

_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def _issuer(state: State) -> Issuer:
    issuer = state.issuer
    assert isinstance(issuer, Issuer)
    return issuer


def _basic(header: str | None) -> tuple[str, str] | None:
    """client_secret_basic: id and secret, each form-encoded, joined by a colon (RFC 6749 2.3.1)."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        client_id, sep, secret = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthenticated("malformed Basic credentials") from exc
    if not sep:
        raise Unauthenticated("malformed Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)


@post("/oauth/token", status_code=200, request_max_body_size=SMALL_BODY)
async def token(request: Request[object, object, State], state: State) -> Response[TokenResponse]:
    form = await request.form()
    if form.get("grant_type") != "client_credentials":
        raise InvalidRequest("only grant_type=client_credentials is supported", param="grant_type")
    basic = _basic(request.headers.get("authorization"))
    posted = form.get("client_id"), form.get("client_secret")
    if basic is not None and any(posted[1:]):
        raise InvalidRequest("use one client authentication method, not two")
    client_id, secret = basic or posted
    if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id:
        raise Unauthenticated("client authentication failed")
    issuer = _issuer(state)
    scope = form.get("scope")
    reply = await issuer.token(issuer.client(client_id, secret), scope if isinstance(scope, str) else None)
    return Response(reply, headers=_NO_STORE)


@get("/.well-known/openid-configuration")
async def openid_configuration(state: State) -> dict[str, object]:
    return _issuer(state).metadata()


@get("/.well-known/oauth-authorization-server")
async def authorization_server(state: State) -> dict[str, object]:
    return _issuer(state).metadata()


@get("/.well-known/jwks.json")
async def jwks(state: State) -> dict[str, list[dict[str, str | list[str]]]]:
    return await _issuer(state).keys.published()


ROUTES = [token, openid_configuration, authorization_server, jwks]
