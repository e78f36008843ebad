"""A secure round's exchanges off the worker's main loop, on held requests.

Between its masked-input phases a phone has nothing to do but wait for the round to move
on. Polling ``GET /v1/tasks/<id>/secagg`` every ``retry_after_s`` (0.25 s) costs a
request a phone every quarter second on the same cores that train: 20 phones, ~80
requests a second. With :class:`SecureSteps` each exchange
(:meth:`fedkb.device_runtime.secagg_client.SecureTask.advance`) runs on a pool thread
with ``wait_s``, so the server holds the request until the phase changes and answers the
moment there is something to send. The pool thread also does the exchange's own work
(encoding and masking the update: ~0.1 CPU s a phone at the ``small`` size), which
would otherwise stall every other phone of the worker's loop. The answer goes, as a
:class:`Stepped`, on the queue the main loop already reads (as
:class:`fedkb.device_runtime.holds.CheckinHolds` does for held check-ins).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fedkb.device_runtime.client import DeviceClient, Refused, Retry
from fedkb.device_runtime.secagg_client import STOPPED, SecureTask


@dataclass
class Stepped:
    """One exchange's result for the main loop: ``what`` and ``wait_s`` as
    :meth:`SecureTask.advance` returns them, or what it raised instead, as plain fields
    (the queue may be a process's: it pickles what it carries)."""

    step_id: int
    what: str = ""
    wait_s: float = 0.0
    retry_after_s: float | None = None  # it raised Retry: try again after this long
    refused: tuple[int, str, str] | None = None  # it raised Refused(status, code, message)

    @property
    def error(self) -> Retry | Refused | None:
        if self.retry_after_s is not None:
            return Retry("secure exchange", self.retry_after_s)
        if self.refused is not None:
            return Refused(*self.refused)
        return None


class SecureSteps:
    """Runs secure exchanges on pool threads (one HTTP session each); answers to ``out``."""

    def __init__(self, server_url: str, out: Any, max_threads: int = 32,
                 client_factory: Callable[[str], Any] = DeviceClient) -> None:
        self.server_url, self.out = server_url, out
        self._client_factory = client_factory
        self._pool = ThreadPoolExecutor(max_workers=max_threads,
                                        thread_name_prefix="fedkb-secagg")
        self._local = threading.local()

    def submit(self, step_id: int, secure: SecureTask, token: str, wait_s: float) -> None:
        self._pool.submit(self._run, step_id, secure, token, wait_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, step_id: int, secure: SecureTask, token: str, wait_s: float) -> None:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._client_factory(self.server_url)
        try:
            what, after = secure.advance(client, token, wait_s=wait_s)
            self.out.put(Stepped(step_id, what, after))
        except Retry as exc:
            self.out.put(Stepped(step_id, retry_after_s=exc.after_s))
        except Refused as exc:
            self.out.put(Stepped(step_id, refused=(exc.status, exc.code, exc.message)))
        except Exception as exc:
            secure.refusal = secure.refusal or f"phone error: {type(exc).__name__}: {exc}"
            self.out.put(Stepped(step_id, STOPPED))
