"""The client verbs' arguments (Ollama's names and flags) and their dispatch; each prints `Error: <line>` and exits 1
on failure, as Ollama's CLI does."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from herd.client import chat, models, transfer
from herd.client.http import Client, ClientError

VERBS = ("run", "list", "ls", "ps", "show", "create", "cp", "rm", "stop", "discover")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("run", help="chat with a model of the running herd (HERD_HOST), or answer one prompt")
    r.add_argument("model")
    r.add_argument("prompt", nargs="*", help="answer this and exit (standard input, when piped, comes first)")
    r.add_argument("--verbose", action="store_true", help="show the answer's token count and tokens/s")
    sub.add_parser("list", aliases=["ls"], help="list the models")
    sub.add_parser("ps", help="list the loaded models")
    s = sub.add_parser("show", help="show a model's information")
    s.add_argument("model")
    part = s.add_mutually_exclusive_group()
    for name in ("modelfile", "template", "parameters", "system", "license"):
        part.add_argument(f"--{name}", dest="part", action="store_const", const=name, help=f"show its {name}")
    c = sub.add_parser("create", help="create a model from a Modelfile (its FROM file is uploaded as a blob)")
    c.add_argument("model")
    c.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    c.add_argument("-q", "--quantize", help="quantize the model, e.g. q8_0")
    cp = sub.add_parser("cp", help="copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    rm = sub.add_parser("rm", help="remove models")
    rm.add_argument("models", nargs="+")
    st = sub.add_parser("stop", help="unload a running model")
    st.add_argument("model")
    d = sub.add_parser("discover", help="list the herds announcing themselves on the LAN (mDNS)")
    d.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default: %(default)s)")
    d.add_argument("--interface", help="the IP address of the interface to browse on (default: all)")


def _guarded(work: Callable[[Client], str | int | None]) -> int:
    try:
        with Client() as client:
            result = work(client)
    except ClientError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if isinstance(result, int):
        return result
    if result:
        print(result)
    return 0


def dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "run":
        return _guarded(lambda c: chat.run(c, args.model, args.prompt, args.verbose))
    if command in ("list", "ls"):
        return _guarded(models.list_models)
    if command == "ps":
        return _guarded(models.ps)
    if command == "show":
        return _guarded(lambda c: models.show(c, args.model, args.part))
    if command == "create":
        return _guarded(lambda c: transfer.create(c, args.model, Path(args.file), args.quantize))
    if command == "cp":
        return _guarded(lambda c: models.copy(c, args.source, args.destination))
    if command == "rm":
        return _guarded(lambda c: models.remove(c, args.models))
    if command == "stop":
        return _guarded(lambda c: models.stop(c, args.model))
    if command == "discover":
        from herd.client.discover import discover  # zeroconf, which no other verb needs

        print(discover(args.timeout, args.interface))
        return 0
    raise AssertionError(command)


def pull_from_server(names: list[str]) -> int | None:
    """`herd pull` through the herd answering at HERD_HOST (Ollama's way); None when none answers, and the caller
    pulls into the local model store instead (a Kubernetes init step, before any server runs)."""
    with Client() as probe:
        if not probe.answers():
            return None

    def each(client: Client) -> None:
        for name in names:
            transfer.pull(client, name)

    return _guarded(each)
