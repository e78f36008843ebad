"""The production WSGI stack (``fedkb.server.wsgi.make_server``) on 127.0.0.1, in a thread.

Unlike a ``fedkb server`` child process, the app stays in the test's hands: a test can
fill the prediction gate, count evictions or read the metrics while real sockets talk to
waitress. ``with LiveServer(app, ...) as url:`` always stops the loop, the worker threads
and every connection.
"""

from __future__ import annotations

import threading
from typing import Any

from waitress import wasyncore

from fedkb.server.wsgi import make_server


class LiveServer:
    """``with LiveServer(app, threads=8) as url: ...`` (waitress on an ephemeral port)."""

    def __init__(self, app: Any, threads: int = 8, idle_timeout_s: int = 15,
                 max_request_s: float = 300.0, connection_limit: int = 1000) -> None:
        self.app = app
        state = app.extensions["fedkb"]
        self.server = make_server(app, host="127.0.0.1", port=0, threads=threads,
                                  max_body_bytes=state.max_upload_bytes + 1024,
                                  idle_timeout_s=idle_timeout_s, max_request_s=max_request_s,
                                  connection_limit=connection_limit)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.effective_port}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            wasyncore.loop(timeout=0.05, map=self.server._map, use_poll=True, count=1)

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self.server._map)
        self.app.extensions["fedkb"].close()
