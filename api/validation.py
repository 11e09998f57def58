"""The one validation boundary for JSON from outside: decode into a wire type, then bound what a schema cannot.

Every request body (every route, every batch line) goes through `decode_json`. msgspec checks the wire type; free-form
fields (a JSON schema, Ollama's `format`, tool parameters) can still hold anything, so after decoding the whole value
is walked once: nesting deeper than MAX_DEPTH and integers outside int64 (what msgpack and llama.cpp can carry) are a
400 naming the field. JSON nested so deep that the decoder itself gives up (RecursionError) is a 400 as well.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from herd.api.errors import from_validation
from herd.errors import InvalidRequest

T = TypeVar("T")

MAX_DEPTH = 64  # llama.cpp's own JSON parser stops at 128; nothing herd accepts needs more than a few levels
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_SHOWN = 6  # path parts named in a nesting error
_SCAN_BYTES = 1 << 20  # how far a body that broke the decoder is scanned to name the field at fault

Path = tuple[str | int, ...]


def decode_json(data: bytes | str, type_: type[T]) -> T:
    """`data` as `type_`, or InvalidRequest naming the field (param) at fault."""
    try:
        value = msgspec.json.decode(data, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise from_validation(exc) from exc
    except RecursionError:
        raise _too_deep(_deep_path(data.encode() if isinstance(data, str) else data)) from None
    check(value)
    return value


def check(value: object) -> None:
    """Raise InvalidRequest when `value` (a decoded wire value) nests too deep or holds an out-of-range integer."""
    # Iterative, so a value that almost broke the decoder cannot break this walk.
    stack: list[tuple[object, int, Path]] = [(value, 0, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, bool | float | str | bytes | msgspec.Raw) or item is None:
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise _out_of_range(path)
            continue
        depth += 1
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        if isinstance(item, list | tuple):
            if _flat(item, path):
                continue
            stack.extend((v, depth, (*path, i)) for i, v in enumerate(item))
        elif isinstance(item, dict):
            stack.extend((v, depth, (*path, str(k))) for k, v in item.items())
        elif isinstance(item, msgspec.Struct):
            fields = type(item).__struct_encode_fields__
            names = type(item).__struct_fields__
            stack.extend((getattr(item, n), depth, (*path, f)) for n, f in zip(names, fields, strict=True))


def _flat(items: list[object] | tuple[object, ...], path: Path) -> bool:
    """True when `items` holds only numbers or only strings (checked at C speed: a list of 100k token ids is common)."""
    if not items:
        return True
    try:
        lo, hi = min(items), max(items)  # type: ignore[type-var]
    except TypeError:
        return False  # mixed kinds, or containers: walked one by one
    if isinstance(lo, str):
        return True
    if isinstance(lo, int | float) and isinstance(hi, int | float):
        for bound in (lo, hi):
            if isinstance(bound, int) and not INT_MIN <= bound <= INT_MAX:
                raise _out_of_range((*path, items.index(bound)))
        return True
    return False


def _name(path: Path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _out_of_range(path: Path) -> InvalidRequest:
    name = _name(path)
    return InvalidRequest(
        f"Invalid value for '{name}': integer out of range (at most {INT_MAX} in magnitude).", param=name or None
    )


def _too_deep(path: Path | None) -> InvalidRequest:
    # The field that holds the deep value, not the 64 steps into it: its first few names, without trailing indices.
    shown = list(path[:_SHOWN]) if path else []
    while shown and isinstance(shown[-1], int):
        shown.pop()
    name = _name(tuple(shown)) or None
    where = f"'{name}' is" if name else "the body is"
    return InvalidRequest(f"Invalid value: {where} nested more than {MAX_DEPTH} levels deep.", param=name)


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"\s*:?|[\[\]{},]')


def _deep_path(data: bytes) -> Path | None:
    """The path of the first container nested deeper than MAX_DEPTH, from a scan of the body's start."""
    path: list[str | int] = []
    kinds: list[bytes] = []
    for match in _TOKEN.finditer(data, 0, _SCAN_BYTES):
        token = match.group()
        if token in (b"[", b"{"):
            if len(kinds) >= MAX_DEPTH:
                return tuple(path)
            kinds.append(token)
            path.append(0 if token == b"[" else "")
        elif token in (b"]", b"}"):
            if kinds:
                kinds.pop()
                path.pop()
        elif token == b",":
            if kinds and kinds[-1] == b"[" and isinstance(path[-1], int):
                path[-1] += 1
        elif token.endswith(b":") and kinds and kinds[-1] == b"{":
            key = token.rstrip(b": \t\r\n")[1:-1]
            path[-1] = key.decode("utf-8", "replace")
    return None
