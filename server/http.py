"""Request parsing at the HTTP boundary: JSON bodies, query and path integers.

Everything a client sends is checked here before it reaches SQLite or the round machine:
bodies are strict JSON (:mod:`fedkb.strict_json`: no deep nesting, 64-bit integers,
finite numbers, valid Unicode) and then :mod:`fedkb.wire` messages; integers in paths
and queries are 64-bit (SQLite raises ``OverflowError`` on anything larger).
"""

from __future__ import annotations

from typing import Any, TypeVar

from flask import Request
from werkzeug.datastructures import MultiDict
from werkzeug.routing import IntegerConverter, ValidationError

from fedkb import strict_json
from fedkb.server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from fedkb.wire import WireError

T = TypeVar("T")
MAX_JSON_BYTES = 64 * 1024


def json_body(req: Request) -> dict[str, Any]:
    """The request's JSON object; 415 for another content type, 400 for broken JSON."""
    if req.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {req.mimetype or 'none'!r}")
    if (req.content_length or 0) > MAX_JSON_BYTES:
        raise PayloadTooLarge(f"JSON bodies are limited to {MAX_JSON_BYTES} bytes")
    raw = req.get_data(cache=False)
    try:
        body = strict_json.loads(raw) if raw else None
    except strict_json.JsonError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", "bad_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", "bad_json")
    return body


def parse(cls: type[T], body: dict[str, Any]) -> T:
    """``cls.from_json(body)``, with :class:`WireError` as a 400 ``invalid_message``."""
    try:
        return cls.from_json(body)  # type: ignore[attr-defined]
    except WireError as exc:
        raise BadRequest(str(exc), "invalid_message") from exc


def query_int(args: MultiDict[str, str], name: str, default: int) -> int:
    """The 64-bit integer query parameter ``name``; 400 ``bad_query`` if not one."""
    values = args.getlist(name)
    if not values:
        return default
    if len(values) > 1:  # which one would be meant? (a fuzzer's ?limit=6&limit=False)
        raise BadRequest(f"{name} is given {len(values)} times", "bad_query")
    raw = values[0]
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        raise BadRequest(f"{name} must be a 64-bit integer", "bad_query")
    value = int(text)
    if not strict_json.INT64_MIN <= value <= strict_json.INT64_MAX:
        raise BadRequest(f"{name} must be a 64-bit integer", "bad_query")
    return value


class Int64Converter(IntegerConverter):
    """``<int:...>`` in routes, limited to 0..2**63-1 (a longer number: no route, 404)."""

    def __init__(self, map: Any, fixed_digits: int = 0, min: int | None = None,
                 max: int | None = None, signed: bool = False) -> None:
        super().__init__(map, fixed_digits, min, strict_json.INT64_MAX if max is None else max,
                         signed)

    def to_python(self, value: str) -> Any:
        if len(value.lstrip("-")) > 19:  # int() of 5000 digits raises ValueError
            raise ValidationError()
        return super().to_python(value)
