"""The error-code table in ``server/errors.py`` lists exactly the codes the server raises.

Codes are read from the source with :mod:`ast`: the ``code`` argument of every
``ApiError`` subclass constructed in ``server/`` (or the class's default code when none is
given), plus the codes the HTTP boundary maps to (Werkzeug's errors, the upload checks'
reason codes). A code added to a raise without a row in the table, or a row no code stands
behind, fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from fedkb.server import errors
from fedkb.server.predictor import ModelUnavailable
from fedkb.server.storage import StorageFull
from fedkb.server.uploads import ENCODING_ERROR_CODES, UPDATE_ERROR_CODES

SERVER = Path(__file__).resolve().parents[1] / "server"
CLASSES = {c.__name__: c.code for c in (
    errors.ApiError, errors.BadRequest, errors.Unauthorized, errors.Forbidden,
    errors.NotFound, errors.Conflict, errors.PayloadTooLarge, errors.UnsupportedMediaType,
    errors.Unprocessable, errors.TooManyRequests, errors.ServiceUnavailable,
    ModelUnavailable, StorageFull)}


def raised_codes() -> set[str]:
    codes: set[str] = set()
    for path in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in CLASSES):
                continue
            arg = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "code"), None)
            if arg is None:
                codes.add(CLASSES[node.func.id])
            elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                codes.add(arg.value)
            # a code held in a variable comes from a mapping counted below
    http = {*errors.HTTP_ERROR_CODES.values(), "http_error"}  # the fallback of the handler
    mapped = {*UPDATE_ERROR_CODES.values(), *ENCODING_ERROR_CODES.values()}
    return codes | mapped | http


def table_codes() -> set[str]:
    doc = errors.__doc__ or ""
    rows = re.findall(r"^``([a-z_]+)``(?:/``([a-z_]+)``)?\s+(?:\d{3}|\dxx)\s", doc, re.M)
    return {c for row in rows for c in row if c}


def test_the_table_lists_exactly_the_codes_raised():
    raised, listed = raised_codes(), table_codes()
    assert raised - listed == set(), f"raised but not in server/errors.py: {raised - listed}"
    assert listed - raised == set(), f"listed but never raised: {listed - raised}"


def test_the_reader_finds_codes_in_raises_and_defaults():
    raised = raised_codes()
    # a literal code, a class default (Forbidden() in auth.check_admin), a mapped one
    assert {"unknown_task", "forbidden", "bad_shape", "method_not_allowed"} <= raised
