"""The phone's HTTP client: the device side of the wire protocol, with honest failure modes.

Each call returns a parsed :mod:`fedkb.wire` message or raises one of:

- :class:`Retry`: worth trying again later (connection refused or dropped, timeout, 5xx,
  429); carries a suggested delay. The server going away is this.
- :class:`Refused`: the server said no for good (a 4xx with a JSON error code such as
  ``late_report``, ``round_abandoned``, ``already_submitted``; the codes are listed in
  :mod:`fedkb.server.errors`); retrying the same request is pointless.
- :class:`Unauthorized`: the token was refused (401): register again.

Uploads are idempotent on the server (a retried identical upload gets the same answer),
so a phone that lost the answer to an upload simply sends the same bytes again: results
are never lost or duplicated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import requests

from fedkb import wire


class ClientError(Exception):
    """Base of the client's outcomes that are not a parsed answer."""


@dataclass
class Retry(ClientError):
    reason: str
    after_s: float = 1.0

    def __str__(self) -> str:
        return f"retry in {self.after_s:.1f}s: {self.reason}"


@dataclass
class Refused(ClientError):
    status: int
    code: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class Unauthorized(Refused):
    pass


class DeviceClient:
    """One HTTP session (keep-alive) for any number of phones of one worker."""

    def __init__(self, base_url: str, timeout_s: float = 30.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout_s
        self.session = requests.Session()
        self.bytes_down = 0
        self.bytes_up = 0

    def close(self) -> None:
        self.session.close()

    # -- transport ------------------------------------------------------------------

    def _request(self, method: str, path: str, token: str | None = None,
                 json_body: dict | None = None, data: bytes | None = None,
                 content_type: str | None = None, extra_timeout_s: float = 0.0,
                 ) -> requests.Response:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        url = path if path.startswith("http") else self.base + path
        try:
            resp = self.session.request(method, url, json=json_body, data=data,
                                        headers=headers,
                                        timeout=self.timeout + extra_timeout_s)
        except requests.RequestException as exc:
            raise Retry(f"{type(exc).__name__}", 2.0) from None
        self.bytes_down += len(resp.content)
        if data is not None:
            self.bytes_up += len(data)
        elif json_body is not None:
            self.bytes_up += len(json.dumps(json_body))
        if resp.status_code >= 500 or resp.status_code == 429:
            after = float(resp.headers.get("Retry-After", 2.0) or 2.0)
            raise Retry(f"HTTP {resp.status_code}", after)
        if resp.status_code >= 400:
            try:
                err = wire.ErrorBody.from_json(resp.json())
                code, msg = err.code, err.message
            except (ValueError, wire.WireError):
                code, msg = f"http_{resp.status_code}", resp.text[:200]
            cls = Unauthorized if resp.status_code == 401 else Refused
            raise cls(resp.status_code, code, msg)
        return resp

    def _json(self, resp: requests.Response) -> dict:
        try:
            return resp.json()
        except ValueError:
            raise Retry("answer was not JSON", 2.0) from None

    # -- protocol -------------------------------------------------------------------

    def register(self, population: str, name: str = "") -> wire.RegisterResponse:
        body = wire.RegisterRequest(population, name).to_json()  # type: ignore[arg-type]
        return wire.RegisterResponse.from_json(self._json(
            self._request("POST", "/v1/devices", json_body=body)))

    def checkin(self, token: str, conditions: wire.Conditions,
                cached_version: int | None, wait_s: float = 0.0) -> wire.CheckinResponse:
        """Check in; with ``wait_s``, a phone selected ahead of its round's model lets the
        server hold the request until its task exists (or ``wait_s`` passes)."""
        body = wire.CheckinRequest(conditions, cached_version, wait_s).to_json()
        return wire.CheckinResponse.from_json(self._json(
            self._request("POST", "/v1/checkin", token=token, json_body=body,
                          extra_timeout_s=wait_s)))

    def download(self, path: str, token: str | None = None) -> bytes:
        return self._request("GET", path, token=token).content

    def upload(self, token: str, task_id: str, body: bytes) -> wire.UploadResult:
        """Send an already-encoded upload body (the same bytes on every retry)."""
        resp = self._request("POST", f"/v1/tasks/{task_id}/result", token=token,
                             data=body, content_type=wire.UPLOAD_CONTENT_TYPE)
        return wire.UploadResult.from_json(self._json(resp))

    def abort(self, token: str, task_id: str, reason: str) -> wire.AbortResult:
        resp = self._request("POST", f"/v1/tasks/{task_id}/abort", token=token,
                             json_body=wire.AbortRequest(reason).to_json())
        return wire.AbortResult.from_json(self._json(resp))

    def secagg_step(self, token: str, task_id: str, wait_s: float = 0.0) -> wire.SecAggStep:
        """A secure round: what its current phase wants of this task's phone; with
        ``wait_s``, the server may hold the request until the phase changes."""
        wait_ms = max(0, min(30_000, round(wait_s * 1000)))
        path = f"/v1/tasks/{task_id}/secagg" + (f"?wait_ms={wait_ms}" if wait_ms else "")
        resp = self._request("GET", path, token=token, extra_timeout_s=wait_ms / 1000)
        try:
            return wire.SecAggStep.from_json(self._json(resp))
        except wire.WireError as exc:
            raise Retry(f"bad secagg step: {exc}", 2.0) from None

    def secagg_submit(self, token: str, task_id: str, body: bytes,
                      content_type: str = "application/json") -> wire.SecAggAck:
        """A secure round: this phone's message for the current phase, already encoded
        (JSON, or a framed masked input: :data:`fedkb.wire.SECAGG_CONTENT_TYPE`)."""
        resp = self._request("POST", f"/v1/tasks/{task_id}/secagg", token=token,
                             data=body, content_type=content_type)
        return wire.SecAggAck.from_json(self._json(resp))

    def status(self) -> dict:
        return self._json(self._request("GET", "/v1/status"))
