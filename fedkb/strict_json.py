"""Strict JSON for messages from outside: bounded depth, int64 integers, finite numbers, UTF-8.

:func:`json.loads` accepts text that later code cannot handle: nesting deep enough to
raise :class:`RecursionError`, integers of thousands of digits (``ValueError`` past
Python's int-string limit; SQLite raises ``OverflowError`` on anything beyond int64),
``NaN`` and ``Infinity``, and lone UTF-16 surrogates (``"\\ud800"``) that no UTF-8
encoder (SQLite, a log file) accepts. :func:`loads` refuses all of them with one
:class:`JsonError`, so every JSON message a device or an admin sends (request bodies,
the upload header) is either well-formed data or a 400.

Standard library only: a phone can import it.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32  # the deepest fedkb message nests 3 levels
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_MAX_INT_DIGITS = len(str(INT64_MIN))  # sign included


class JsonError(ValueError):
    """Text that is not strict JSON (the message says which rule it breaks)."""


def _int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise JsonError("integer out of range (64-bit integers only)")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise JsonError("integer out of range (64-bit integers only)")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError(f"number {text[:20]!r} is out of range")
    return value


def _constant(name: str) -> Any:
    raise JsonError(f"{name} is not JSON")


def _check(value: Any) -> None:
    """Refuse nesting over :data:`MAX_DEPTH` and strings that are not valid Unicode."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            _check_text(v)
        elif isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise JsonError(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(v, dict):
                for k in v:
                    _check_text(k)
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)


def _check_text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JsonError("string holds a lone UTF-16 surrogate (not valid Unicode)") from exc


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """The JSON value in ``raw`` (UTF-8 bytes or text); :class:`JsonError` if not strict JSON."""
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except JsonError:
        raise
    except RecursionError as exc:
        raise JsonError(f"nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, int() limits
        raise JsonError(str(exc)[:200]) from exc
    _check(value)
    return value


__all__ = ["INT64_MAX", "INT64_MIN", "MAX_DEPTH", "JsonError", "loads"]
