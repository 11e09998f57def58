"""A Modelfile (FROM, SYSTEM, TEMPLATE, PARAMETER, LICENSE) -> the fields of Ollama's JSON create request.

Older clients send `modelfile` text instead of `from`/`files`. `FROM` names a model or an uploaded blob
(`@sha256:<hex>`); a file path is refused, never opened: the server does not read client-named paths.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from herd.api.models.names import parse_digest
from herd.api.wire import ollama as wire
from herd.errors import InvalidRequest

_LINE = re.compile(r"(?P<op>[A-Za-z]+)\s+(?P<rest>.*)", re.DOTALL)
_MAX_LENGTH = 1 << 20


class Parsed(msgspec.Struct):
    from_: str = ""
    files: dict[str, str] = {}
    template: str | None = None
    system: str | None = None
    license: str | None = None
    parameters: dict[str, Any] = {}


def _instructions(text: str) -> list[tuple[str, str]]:
    """(instruction, value) pairs; a value may be `\"\"\"…\"\"\"` over several lines, `"…"` or the rest of the line."""
    found, pos = [], 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end].strip()
        if not line or line.startswith("#"):
            pos = end + 1
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise InvalidRequest(f"modelfile: cannot read {line[:60]!r}", param="modelfile")
        op, rest = match.group("op").upper(), match.group("rest").strip()
        if rest.startswith('"""'):
            start = text.index('"""', pos) + 3
            close = text.find('"""', start)
            if close < 0:
                raise InvalidRequest(f'modelfile: {op} has an unterminated """', param="modelfile")
            found.append((op, text[start:close]))
            end = text.find("\n", close)
            pos = len(text) if end < 0 else end + 1
            continue
        if len(rest) >= 2 and rest[0] == rest[-1] == '"':
            rest = rest[1:-1]
        found.append((op, rest))
        pos = end + 1
    return found


def parse(text: str) -> Parsed:
    if len(text) > _MAX_LENGTH:
        raise InvalidRequest("modelfile is too long", param="modelfile")
    parsed = Parsed()
    raw_parameters: dict[str, Any] = {}
    for op, value in _instructions(text):
        if op == "FROM":
            digest = value.removeprefix("@")
            if digest.startswith("sha256"):
                parse_digest(digest, param="modelfile")
                parsed.files = {"model.gguf": digest.replace("sha256-", "sha256:", 1)}
            elif value.startswith(("/", ".", "~")) or "\\" in value or value.lower().endswith(".gguf"):
                raise InvalidRequest(
                    "modelfile: FROM a file path is not read on the server; upload the file with "
                    "POST /api/blobs/sha256:<hex> and use FROM @sha256:<hex> (or `files`)",
                    param="modelfile",
                )
            else:
                parsed.from_ = value
        elif op == "SYSTEM":
            parsed.system = value
        elif op == "TEMPLATE":
            parsed.template = value
        elif op == "LICENSE":
            parsed.license = value
        elif op == "PARAMETER":
            key, _, item = value.partition(" ")
            item = item.strip()
            if len(item) >= 2 and item[0] == item[-1] == '"':
                item = item[1:-1]
            if key == "stop":
                raw_parameters.setdefault("stop", []).append(item)
            else:
                raw_parameters[key] = item
        elif op in ("ADAPTER", "MESSAGE", "REQUIRES"):
            raise InvalidRequest(f"modelfile: {op} is unsupported", param="modelfile")
        else:
            raise InvalidRequest(f"modelfile: unknown instruction {op}", param="modelfile")
    parsed.parameters = _typed(raw_parameters)
    return parsed


def _typed(raw: dict[str, Any]) -> dict[str, Any]:
    """PARAMETER values arrive as text: give each the type Ollama's options have (num_ctx 4096 -> 4096)."""
    fields = {f.name for f in msgspec.structs.fields(wire.Options)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise InvalidRequest(f"modelfile: unknown parameter {unknown[0]!r}", param="modelfile")
    try:
        options = msgspec.convert(raw, wire.Options, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"modelfile: {exc}", param="modelfile") from None
    return {k: v for k, v in msgspec.structs.asdict(options).items() if v is not None}


def merged(body: wire.CreateRequest) -> wire.CreateRequest:
    """The request with its Modelfile's instructions filled in; fields sent as JSON win."""
    if body.modelfile is None:
        return body
    parsed = parse(body.modelfile)
    return msgspec.structs.replace(
        body,
        modelfile=None,
        from_=body.from_ or parsed.from_,
        files=body.files or parsed.files or None,
        template=body.template if body.template is not None else parsed.template,
        system=body.system if body.system is not None else parsed.system,
        parameters={**parsed.parameters, **(body.parameters or {})} or None,
    )
