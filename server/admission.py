"""Load shedding for ``POST /v1/predict``: a bounded admission gate, refusals at once.

A prediction costs an interpreter call (milliseconds) and an interpreter is borrowed
from a small pool (``predict.interpreters``); without a bound, 500 typing clients queue
on that pool inside the WSGI threads, every prediction waits seconds, and check-ins wait
for a free thread behind them. :class:`AdmissionGate` admits at most ``limit``
predictions at once (computing or waiting for an interpreter: a queue of
``limit - interpreters``); one more is refused at once with 503 ``overloaded`` and
``Retry-After`` (:class:`~fedkb.server.errors.ServiceUnavailable`), a sub-millisecond
answer that frees its thread. A prediction that waited longer than
``predict.max_queue_s`` for a WSGI thread (the WSGI server stamps when it started
waiting) is shed the same way: its client has waited long enough, and answering it would
only make every later one wait longer. A client that honours ``Retry-After`` backs off; one that
does not still costs the server only refusals.

Check-ins, uploads and downloads are never gated here. They are also served first by the
WSGI server (:class:`fedkb.server.wsgi.TwoLaneQueue`): a free thread takes a waiting
device request before any waiting prediction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fedkb.server.errors import ServiceUnavailable

RESERVED_THREADS = 2  # WSGI threads predictions can never take all of


def gate_size(max_inflight: int, threads: int) -> int:
    """Predictions admitted at once: ``predict.max_inflight``, leaving
    :data:`RESERVED_THREADS` of the server's ``threads`` to everything else."""
    return max(1, min(max_inflight, threads - RESERVED_THREADS))


class AdmissionGate:
    """At most ``limit`` holders at once; :meth:`admit` refuses the next one at once."""

    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        if limit < 1:
            raise ValueError("an admission gate admits at least one request")
        self.limit, self.retry_after_s = limit, retry_after_s
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.inflight = 0
        self.admitted = 0
        self.shed = 0

    def _shed(self, why: str) -> ServiceUnavailable:
        with self._lock:
            self.shed += 1
        return ServiceUnavailable(f"{why}; retry in {self.retry_after_s} s",
                                  retry_after_s=self.retry_after_s)

    @contextmanager
    def admit(self, queued_s: float = 0.0, max_queue_s: float | None = None
              ) -> Iterator[None]:
        """Hold a slot for the ``with`` block, or raise 503 ``overloaded`` now: every slot
        is taken, or the request already waited ``queued_s`` > ``max_queue_s``."""
        if max_queue_s is not None and queued_s > max_queue_s:
            raise self._shed(f"the prediction waited {queued_s:.2f} s for the server")
        if not self._slots.acquire(blocking=False):
            raise self._shed(f"the server is answering {self.limit} predictions already")
        with self._lock:
            self.inflight += 1
            self.admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self.inflight -= 1
            self._slots.release()


def queued_s(environ: dict, now: float | None = None) -> float:
    """How long the request waited for a WSGI thread (0 if the server did not say)."""
    stamp = environ.get("HTTP_FEDKB_QUEUED_AT")
    try:
        started = float(stamp) if stamp is not None else None
    except ValueError:
        return 0.0
    if started is None:
        return 0.0
    return max(0.0, (time.monotonic() if now is None else now) - started)


__all__ = ["RESERVED_THREADS", "AdmissionGate", "gate_size", "queued_s"]
