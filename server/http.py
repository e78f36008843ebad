"""Request parsing at the HTTP boundary: JSON bodies into :mod:`fedkb.wire` messages."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import Request

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
        body = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
