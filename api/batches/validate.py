"""Batch input files -> the lines to run, or file-level errors that name their (1-based) line numbers."""

from __future__ import annotations

from collections.abc import Collection

import msgspec
from herd.api.validation import decode_json
from herd.api.wire.batch import BatchError, BatchInputLine
from herd.errors import InvalidRequest

MAX_REPORTED_ERRORS = 1000  # a file of a million bad lines still gets an answer of sensible size


class Line(msgspec.Struct, frozen=True):
    number: int  # 1-based line in the input file
    custom_id: str
    body: bytes  # the request body as sent, decoded later exactly like an interactive request's


class _ModelOnly(msgspec.Struct):
    model: object = None


def parse_input(
    data: bytes, endpoint: str, known_models: Collection[str], max_lines: int
) -> tuple[list[Line], list[BatchError], str | None]:
    """Lines to run, file-level errors, and the model the lines name (the first valid one)."""
    lines: list[Line] = []
    errors: list[BatchError] = []
    seen: set[str] = set()
    model: str | None = None

    def error(code: str, message: str, number: int | None, param: str | None = None) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(BatchError(code=code, message=message, param=param, line=number))

    try:
        text_lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        number = data[: exc.start].count(b"\n") + 1
        return [], [BatchError(code="invalid_file", message="the file is not valid UTF-8", line=number)], None
    for number, text in enumerate(text_lines, start=1):
        if not text.strip():
            continue  # blank lines (a trailing newline above all) carry no request
        try:
            item = decode_json(text, BatchInputLine)
        except InvalidRequest as exc:
            error("invalid_json_line", f"This line is not a valid JSON object of a batch request: {exc}", number)
            continue
        ok = True
        if not item.custom_id:
            error("missing_custom_id", "The request has no custom_id.", number, "custom_id")
            ok = False
        elif item.custom_id in seen:
            error(
                "duplicate_custom_id", f"The custom_id '{item.custom_id}' is used more than once.", number, "custom_id"
            )
            ok = False
        else:
            seen.add(item.custom_id)
        if item.method != "POST":
            error("invalid_method", "The method must be POST.", number, "method")
            ok = False
        if item.url != endpoint:
            error(
                "invalid_url", f"The url '{item.url}' does not match the batch's endpoint '{endpoint}'.", number, "url"
            )
            ok = False
        if not item.body:
            error("missing_body", "The request has no body.", number, "body")
            continue
        try:
            named = decode_json(item.body, _ModelOnly).model
        except InvalidRequest:
            error("invalid_body", "The body must be a JSON object.", number, "body")
            continue
        if not isinstance(named, str) or not named:
            error("missing_model", "The body names no model.", number, "body.model")
            ok = False
        elif named not in known_models:
            error("model_not_found", f"The model '{named}' does not exist.", number, "body.model")
            ok = False
        elif model is None:
            model = named
        if ok and item.custom_id:
            lines.append(Line(number=number, custom_id=item.custom_id, body=bytes(item.body)))
    if not lines and not errors:
        errors.append(BatchError(code="empty_file", message="The input file has no requests.", line=None))
    if len(lines) > max_lines:
        errors.append(
            BatchError(code="too_many_requests", message=f"A batch holds at most {max_lines} requests.", line=None)
        )
    return lines, errors, model
