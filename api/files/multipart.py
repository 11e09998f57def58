"""A streaming multipart/form-data reader: file parts go to a sink chunk by chunk, never whole into memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from email.message import Message
from typing import Protocol

from herd.errors import InvalidRequest

_MAX_HEADER_BYTES = 16 * 1024
_MAX_FIELD_BYTES = 64 * 1024  # plain form fields (purpose, ...) are short; only file parts may be large


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


class _Bytes:
    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self._limit = limit

    def write(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > self._limit:
            raise InvalidRequest("a form field is too long")


def boundary_of(content_type: str) -> bytes:
    msg = Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if msg.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise InvalidRequest("the body must be multipart/form-data with a boundary")
    return boundary.encode("latin-1")


def _disposition(raw_headers: bytes) -> tuple[str, str | None]:
    msg = Message()
    for line in raw_headers.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            msg[key.strip()] = value.strip()
    if msg.get_content_disposition() != "form-data":
        raise InvalidRequest("a multipart part has no form-data Content-Disposition")
    name = msg.get_param("name", header="content-disposition")
    filename = msg.get_filename()
    if not isinstance(name, str):  # RFC 2231 forms come back as tuples; browsers and SDKs send plain names
        raise InvalidRequest("a multipart part has no name")
    return name, filename


async def read_form(
    chunks: AsyncIterator[bytes], boundary: bytes, open_file: Callable[[str, str], Sink]
) -> dict[str, str]:
    """Read the form: text fields are returned; a part with a filename is written to open_file(name, filename)."""
    delimiter = b"\r\n--" + boundary
    buf = bytearray(b"\r\n")  # the first boundary has no CRLF before it: pretend it has
    fields: dict[str, str] = {}
    state = "preamble"
    sink: Sink | None = None
    text: _Bytes | None = None
    name = ""
    async for chunk in chunks:
        buf += chunk
        while True:
            if state == "preamble":
                at = buf.find(delimiter)
                if at < 0:
                    del buf[: max(0, len(buf) - len(delimiter))]
                    break
                del buf[: at + len(delimiter)]
                state = "after_delimiter"
            elif state == "after_delimiter":
                if len(buf) < 2:
                    break
                if buf[:2] == b"--":
                    return fields
                if buf[:2] != b"\r\n":
                    raise InvalidRequest("malformed multipart body")
                del buf[:2]
                state = "headers"
            elif state == "headers":
                at = buf.find(b"\r\n\r\n")
                if at < 0:
                    if len(buf) > _MAX_HEADER_BYTES:
                        raise InvalidRequest("multipart part headers are too long")
                    break
                name, filename = _disposition(bytes(buf[:at]))
                del buf[: at + 4]
                if filename is not None:
                    sink, text = open_file(name, filename), None
                else:
                    text = _Bytes(_MAX_FIELD_BYTES)
                    sink = text
                state = "body"
            else:  # body
                assert sink is not None
                at = buf.find(delimiter)
                if at < 0:
                    # Keep a tail that could be the start of the delimiter; everything before it is data.
                    keep = len(delimiter) - 1
                    if len(buf) > keep:
                        sink.write(bytes(buf[: len(buf) - keep]))
                        del buf[: len(buf) - keep]
                    break
                sink.write(bytes(buf[:at]))
                del buf[: at + len(delimiter)]
                if text is not None:
                    fields[name] = text.data.decode("utf-8", "replace")
                sink, text = None, None
                state = "after_delimiter"
    raise InvalidRequest("the multipart body ended before its closing boundary")
