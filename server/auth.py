"""Device tokens and the admin token.

A device token is the device id signed with the server's secret and a timestamp
(:mod:`itsdangerous`), so the server needs no token table: a token proves which device
sent a request and when it was issued, and is bound to exactly that device id. Expiry
uses the server's injectable clock. The admin token is a shared secret compared in
constant time.
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

from fedkb.server.errors import Forbidden, Unauthorized

ADMIN_ENV = "FEDKB_ADMIN_TOKEN"


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
    """The admin token: from config, else ``$FEDKB_ADMIN_TOKEN``, else one kept on disk."""
    if configured:
        return configured
    if os.environ.get(ADMIN_ENV):
        return os.environ[ADMIN_ENV]
    path = state_dir / "admin_token"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token
