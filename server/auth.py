"""Device tokens and the admin token.

A device token is the device id signed with the server's secret and a timestamp
(:mod:`itsdangerous`), so the server needs no token table: a token proves which device
sent a request and when it was issued, and is bound to exactly that device id. Expiry
uses the server's injectable clock. The admin token is a shared secret compared in
constant time. Both secrets come from the config, the environment, or a 0600 file in
the state directory, never from the database (see :func:`resolve_secret_key`).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Request
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from fedkb.server.db import Database
from fedkb.server.errors import Forbidden, Unauthorized
from fedkb.server.state_dir import read_private, write_private

ADMIN_ENV = "FEDKB_ADMIN_TOKEN"
SECRET_ENV = "FEDKB_SECRET_KEY"
ADMIN_FILE = "admin_token"
SECRET_FILE = "secret_key"
SECRET_DB_KEY = "secret_key"  # where versions before 0600 files kept it (kv table)


class _ClockSigner(TimestampSigner):
    """A timestamp signer whose "now" is the server clock (tests move it)."""

    def __init__(self, *args: Any, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


class DeviceTokens:
    """Issue and check device tokens."""

    def __init__(self, secret: str, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._ser = URLSafeTimedSerializer(secret, salt="fedkb-device-token",
                                           signer=_ClockSigner, signer_kwargs={"clock": clock})

    def issue(self, device_id: str) -> str:
        return self._ser.dumps({"d": device_id})

    def verify(self, token: str) -> str:
        """The device id in ``token``; :class:`Unauthorized` if forged, damaged or expired."""
        try:
            # itsdangerous compares the age against time.time(); we pass our clock's age.
            payload, issued = self._ser.loads(token, return_timestamp=True)
        except SignatureExpired as exc:  # pragma: no cover - we check the age below
            raise Unauthorized("device token expired; register again", "token_expired") from exc
        except BadSignature as exc:
            raise Unauthorized("device token is not valid (bad signature)") from exc
        if self._clock() - issued.timestamp() > self.ttl_s:
            raise Unauthorized("device token expired; register again", "token_expired")
        if not isinstance(payload, dict) or not isinstance(payload.get("d"), str):
            raise Unauthorized("device token is not valid (bad payload)")
        return payload["d"]


def bearer(request: Request) -> str:
    """The bearer token of ``request``; :class:`Unauthorized` (``missing_token``) if none."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("this call needs 'Authorization: Bearer <token>'", "missing_token")
    return token.strip()


def check_admin(request: Request, admin_token: str) -> None:
    """Refuse unless the request carries the admin token."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("admin call needs 'Authorization: Bearer <admin token>'",
                           "missing_token")
    if not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
        raise Forbidden("not the admin token")


def resolve_admin_token(configured: str | None, state_dir: Path) -> str:
    """The admin token: from config, else ``$FEDKB_ADMIN_TOKEN``, else one kept on disk
    (``STATE/admin_token``, 0600)."""
    if configured:
        return configured
    if os.environ.get(ADMIN_ENV):
        return os.environ[ADMIN_ENV]
    path = state_dir / ADMIN_FILE
    token = read_private(path)
    if token:
        return token
    token = secrets.token_urlsafe(24)
    write_private(path, token)
    return token


def resolve_secret_key(configured: str | None, state_dir: Path, db: Database) -> str:
    """The key that signs device tokens: from config, else ``$FEDKB_SECRET_KEY``, else
    ``STATE/secret_key`` (0600; generated once).

    Older versions kept it in the database, which is not a secret file: a key found there
    moves to ``STATE/secret_key`` (so issued tokens stay valid) and its row is deleted.
    """
    stored = db.get(SECRET_DB_KEY)
    path = state_dir / SECRET_FILE
    key = configured or os.environ.get(SECRET_ENV) or read_private(path)
    if not key:
        key = stored if isinstance(stored, str) and stored else secrets.token_urlsafe(32)
        write_private(path, key)
    if stored is not None:
        db.forget(SECRET_DB_KEY)
    return key
