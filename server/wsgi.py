"""The production WSGI server (waitress) around the app: JSON refusals, idle cut-off, lanes.

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

**Idle connections cannot lock phones out.** Waitress stops accepting at
``connection_limit`` until its cleanup pass (every ``cleanup_interval``) closes
connections idle for ``channel_timeout``: 1,010 idle sockets kept every new check-in
waiting 15-18 s (and forever, for an attacker who reconnects). :class:`FedkbServer`
instead makes room: at the limit, the connections idle longest with no request being
answered are closed, a few at a time (a held check-in is
being answered, an upload in progress has fresh activity: both are the last to go).
The limit is ``ServerConfig.connection_limit``, capped by the process's file descriptor
limit (:func:`connection_cap`).

**Device requests first.** Waitress hands requests to its threads first come, first
served; under a flood of predictions a check-in waited behind hundreds of them.
:class:`TwoLaneQueue` gives a free thread any waiting device request (check-ins,
uploads, downloads, status, admin) before a waiting prediction (``/v1/predict``), which
:mod:`fedkb.server.admission` bounds in turn.
"""

from __future__ import annotations

import json
import resource
import time
from collections import deque
from typing import Any, ClassVar

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer, create_server
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


SECOND_LANE = ("/v1/predict",)  # paths a free thread serves after every other request
QUEUED_AT = "FEDKB_QUEUED_AT"  # stamped on second-lane requests: WSGI HTTP_FEDKB_QUEUED_AT
EVICT_BATCH = 8  # connections closed at once to make room at the limit
RESERVED_FDS = 64  # descriptors kept for the database, checkpoints, the listener


class TwoLaneQueue:
    """Waitress's task queue (``dispatcher.queue``) in two lanes: a channel whose next
    request is for a :data:`SECOND_LANE` path waits behind every other waiting one.
    Used only under the dispatcher's lock, as the deque it replaces."""

    def __init__(self) -> None:
        self.first: deque[Any] = deque()
        self.second: deque[Any] = deque()

    def append(self, channel: Any) -> None:
        requests = getattr(channel, "requests", None)
        path = getattr(requests[0], "path", "") if requests else ""
        if path.startswith(SECOND_LANE):
            # when it started waiting (overwriting any such header a client sent): the
            # app sheds a prediction that waited too long (fedkb.server.admission)
            requests[0].headers[QUEUED_AT] = repr(time.monotonic())
            self.second.append(channel)
        else:
            self.first.append(channel)

    def popleft(self) -> Any:
        return self.first.popleft() if self.first else self.second.popleft()

    def __len__(self) -> int:
        return len(self.first) + len(self.second)


class FedkbServer(TcpWSGIServer):
    """Waitress's TCP server that, at ``connection_limit``, closes idle connections to
    accept a waiting one instead of refusing to accept until its next cleanup pass."""

    evicted = 0

    def readable(self) -> bool:
        # Make room before the limit is reached: at the limit waitress stops polling the
        # listening socket, and a new connection would wait for the loop's 1 s timeout.
        if self.accepting and len(self._map) >= self.adj.connection_limit:
            self.evict_idle(len(self._map) - self.adj.connection_limit + EVICT_BATCH)
        return super().readable()

    def evict_idle(self, n: int) -> int:
        """Close up to ``n`` connections with no request being answered, longest idle
        first (they close on the loop's next pass); how many were marked."""
        idle = sorted((c for c in self.active_channels.values()
                       if not c.requests and not c.will_close), key=lambda c: c.last_activity)
        for channel in idle[:n]:
            channel.will_close = True
        self.evicted += min(n, len(idle))
        return min(n, len(idle))


def connection_cap(wanted: int) -> int:
    """``wanted`` connections, or fewer if the file descriptor limit cannot hold them
    (the soft limit is first raised to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_FDS))


def make_server(app: Any, *, host: str, port: int, threads: int, max_body_bytes: int,
                idle_timeout_s: int, max_request_s: float = 0.0,
                connection_limit: int = 1000) -> Any:
    """A waitress server for ``app``, not yet running (``.run()``; ``.effective_port``)."""
    # Model uploads and weight downloads are megabytes: waitress's defaults read a
    # request 8 kB per call and spool bodies over 512 kB (responses over 1 MB) to temp
    # files; in a 20-round fleet run that was ~15% of the server's CPU.
    server = create_server(app, host=host, port=port, threads=threads,
                           max_request_body_size=max_body_bytes,
                           channel_timeout=idle_timeout_s,
                           cleanup_interval=max(1, min(idle_timeout_s // 4, 30)),
                           connection_limit=connection_cap(connection_limit), ident="fedkb",
                           recv_bytes=1 << 18, inbuf_overflow=max_body_bytes,
                           outbuf_overflow=64 << 20)
    if type(server) is TcpWSGIServer:  # one TCP socket (not a unix or multi-socket one)
        server.__class__ = FedkbServer
    dispatcher = server.task_dispatcher
    with dispatcher.lock:
        lanes = TwoLaneQueue()
        while dispatcher.queue:
            lanes.append(dispatcher.queue.popleft())
        dispatcher.queue = lanes
    server.channel_class = type("FedkbChannel", (JsonErrorChannel,),
                                {"max_request_s": float(max_request_s)})
    return server


__all__ = ["QUEUED_AT", "FedkbServer", "JsonErrorChannel", "JsonErrorTask", "TwoLaneQueue",
           "connection_cap", "make_server"]
