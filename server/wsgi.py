"""The production WSGI server (waitress) around the app: its own refusals in JSON, idle cut-off.

Waitress answers some requests itself, before the app runs: a body over
``max_request_body_size`` (413), a request it cannot parse (400), headers too large
(431). Its answers are plain text; :class:`JsonErrorTask` gives them the body every
other error has, ``{"error": {"code", "message"}}``, with the codes of
:data:`fedkb.server.errors.HTTP_ERROR_CODES` (``http_error`` for the rest).

A client that sends less than its ``Content-Length`` (or nothing after its headers)
would hold a connection for waitress's ``channel_timeout`` plus a ``cleanup_interval``
(90 s with the defaults); :func:`make_server` closes a connection idle for
``idle_timeout_s`` while no request of it is being answered (a held check-in is being
answered, so it is never cut), and one whose request (headers and body) has not
arrived after ``max_request_s`` (a client trickling a byte at a time). A phone on a slow
link keeps its connection as long as bytes keep moving and its upload fits that time.
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from fedkb.server.errors import HTTP_ERROR_CODES


class JsonErrorTask(ErrorTask):
    """Waitress's own error response, as the JSON error body of the API."""

    def execute(self) -> None:
        e = self.request.error
        code = HTTP_ERROR_CODES.get(e.code, "http_error")
        message = f"{e.reason}: {e.body}" if e.body else e.reason
        body = json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    """A connection whose errors are JSON and whose requests must arrive in time.

    ``max_request_s`` (0: no limit) bounds how long one request (headers and body) may
    take to arrive: the idle timeout alone never cuts a client that trickles a byte now
    and then.
    """

    error_task_class = JsonErrorTask
    max_request_s: ClassVar[float] = 0.0
    _request_started = 0.0

    def received(self, data: bytes) -> bool:
        now = time.monotonic()
        if self.request is None:  # these bytes start a request
            self._request_started = now
        elif self.max_request_s and now - self._request_started > self.max_request_s:
            self.will_close = True  # closed by the next write pass; the bytes are dropped
            return False
        return super().received(data)


def make_server(app: Any, *, host: str, port: int, threads: int, max_body_bytes: int,
                idle_timeout_s: int, max_request_s: float = 0.0) -> Any:
    """A waitress server for ``app``, not yet running (``.run()``; ``.effective_port``)."""
    # Model uploads and weight downloads are megabytes: waitress's defaults read a
    # request 8 kB per call and spool bodies over 512 kB (responses over 1 MB) to temp
    # files; in a 20-round fleet run that was ~15% of the server's CPU.
    server = create_server(app, host=host, port=port, threads=threads,
                           max_request_body_size=max_body_bytes,
                           channel_timeout=idle_timeout_s,
                           cleanup_interval=max(1, min(idle_timeout_s // 4, 30)),
                           connection_limit=1000, ident="fedkb", recv_bytes=1 << 18,
                           inbuf_overflow=max_body_bytes, outbuf_overflow=64 << 20)
    server.channel_class = type("FedkbChannel", (JsonErrorChannel,),
                                {"max_request_s": float(max_request_s)})
    return server


__all__ = ["JsonErrorChannel", "JsonErrorTask", "make_server"]
