"""Held check-ins: a phone selected ahead of its round's model waits on an open request.

The worker's main loop never blocks on one: :class:`CheckinHolds` sends each held
check-in (``CheckinRequest.wait_s``) from a small thread pool, one HTTP session per pool
thread, and puts the answer, as a :class:`Claimed`, on the queue the main loop already
reads (its compute results). The server answers with the task the moment the round's
model exists, or "selected_waiting" when the wait ends or it had no thread to spare.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fedkb import wire
from fedkb.device_runtime.client import DeviceClient, Refused, Retry


@dataclass
class Claimed:
    """The answer to a held check-in, for the main loop (``response`` None: it failed)."""

    hold_id: int
    response: wire.CheckinResponse | None
    held_to_the_end: bool = False  # the server held it the whole time asked


class CheckinHolds:
    """Sends held check-ins on pool threads; answers go to ``out`` (``.put``)."""

    def __init__(self, server_url: str, out: Any, max_threads: int = 32,
                 client_factory: Callable[[str], Any] = DeviceClient) -> None:
        self.server_url, self.out = server_url, out
        self._client_factory = client_factory
        self._pool = ThreadPoolExecutor(max_workers=max_threads,
                                        thread_name_prefix="fedkb-hold")
        self._local = threading.local()

    def submit(self, hold_id: int, token: str, conditions: wire.Conditions,
               cached: int | None, wait_s: float) -> None:
        self._pool.submit(self._run, hold_id, token, conditions, cached, wait_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, hold_id: int, token: str, conditions: wire.Conditions,
             cached: int | None, wait_s: float) -> None:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._client_factory(self.server_url)
        t0 = time.monotonic()
        try:
            resp: wire.CheckinResponse | None = client.checkin(token, conditions, cached,
                                                               wait_s=wait_s)
        except (Retry, Refused):
            resp = None
        self.out.put(Claimed(hold_id, resp, time.monotonic() - t0 >= wait_s))
