"""The `herd` command: `serve` (everything on one machine), `api` and `worker` (the parts, for scale-out), and
Ollama's client verbs (`run`, `list`, `ps`, `show`, `create`, `cp`, `rm`, `stop`, `pull`) against a running herd."""

# Parsing and dispatch only: the processes live in herd.supervisor, the client verbs in herd.client, the local
# `pull` in herd.api.models.pull_cli and `key` in herd.api.auth.key_cli.

from __future__ import annotations

import argparse
import sys

from herd import logs, supervisor
from herd.api.auth import key_cli
from herd.client import commands as client_commands
from herd.config import load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="herd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "API + workers (+ a private Redis if needed) on this machine"),
        ("api", "the HTTP API"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host")
        p.add_argument("--port", type=int)
    client_commands.add_parsers(sub)
    pl = sub.add_parser(
        "pull",
        help="download models (hf.co/... names, allowed https URLs): through the herd at HERD_HOST when one "
        "answers, else straight into the local model store",
    )
    pl.add_argument("models", nargs="+", help="what /api/pull accepts, e.g. hf.co/OWNER/REPO:Q4_K_M")
    w = sub.add_parser("worker", help="a worker process for one model")
    w.add_argument("--model", help="model name (default: the first configured)")
    w.add_argument(
        "--simulate",
        type=float,
        default=0.0,
        metavar="TOKENS_PER_S",
        help="TEST AND BENCHMARK ONLY: no model; answer --model's requests with meaningless tokens at this rate",
    )
    k = sub.add_parser(
        "key",
        help="make a new API key (or a built-in issuer client's secret) and print its configuration entry",
        description="Prints the new secret once (give it to the caller) and the entry for HERD_API_KEYS or "
        "HERD_AUTH_CLIENTS, which holds only its SHA-256. With --stdin, hashes a secret read from standard input.",
    )
    k.add_argument("name", help="the key's name (its principal is key:NAME), or the client id")
    k.add_argument("--scopes", default="inference,models:read", help="comma-separated (default: %(default)s)")
    k.add_argument("--stdin", action="store_true", help="hash a secret read from standard input instead")
    t = sub.add_parser("token", help="an access token by the client-credentials grant (herd's issuer or an IdP)")
    t.add_argument("client_id")
    t.add_argument("--url", help="the token endpoint (default: this herd's /oauth/token)")
    t.add_argument("--scope", default="inference,models:read", help="comma-separated (default: %(default)s)")
    t.add_argument("--stdin", action="store_true", help="read the secret from standard input (else HERD_CLIENT_SECRET)")
    args = parser.parse_args(argv)
    if args.command in client_commands.VERBS:
        sys.exit(client_commands.dispatch(args))
    if args.command == "key":
        sys.exit(key_cli.key(args.name, args.scopes, args.stdin))
    if args.command == "token":
        from herd.api.auth import token_cli  # authlib's OAuth2 client, which no other command needs

        defaults = load_settings()
        url = args.url or f"http://{defaults.host}:{defaults.port}/oauth/token"
        sys.exit(token_cli.token(url, args.client_id, args.scope, args.stdin))
    settings = load_settings(host=getattr(args, "host", None), port=getattr(args, "port", None))
    logs.setup(settings.log_level, settings.log_format)
    if args.command in ("serve", "api"):
        try:
            key_cli.check_settings(settings)
        except (ValueError, OSError) as exc:
            sys.exit(f"herd {args.command}: {exc}")
    if args.command == "pull":
        remote = client_commands.pull_from_server(args.models)
        if remote is not None:
            sys.exit(remote)
        from herd.api.models import pull_cli  # the HTTP client stack, which no other command needs

        sys.exit(pull_cli.pull(settings, args.models))
    if args.command == "serve":
        sys.exit(supervisor.serve(settings))
    elif args.command == "api":
        supervisor.check_redis("api", settings)
        supervisor.run_api(settings)
    else:
        supervisor.check_redis("worker", settings, wait_s=10.0)  # arq used to retry its first connection like this
        supervisor.run_worker(settings, args.model, args.simulate)


if __name__ == "__main__":
    main()
