"""A full disk: recognised, answered as 507 ``storage_full``, and never half-applied.

What fails when the state directory's file system is full (or the process is over its
file size limit): the checkpoint file of a commit (``OSError`` ENOSPC, EDQUOT or EFBIG)
and any SQLite write (``sqlite3.OperationalError`` SQLITE_FULL, "database or disk is
full"). :func:`is_storage_full` tells those from other errors.

What the server does about it (the round machine, :mod:`fedkb.server.round_machine`):

- **An upload** whose task row cannot be written is refused, 507 ``storage_full`` with
  ``Retry-After`` (:class:`StorageFull`): nothing was folded, the task is still the
  device's to report, and a retry once there is room is accepted like a first try.
- **A check-in** whose task row cannot be written gets 507 too; the device keeps its seat
  and claims the task on its next check-in.
- **A commit** whose checkpoint file or database transaction fails abandons its round
  (reason ``storage_full``): the model, the server optimizer's state and the version
  numbers stay as they were, no version is served without its row, and the next round
  opens with the next round id once there is room.
- **Bookkeeping** that is rewritten later anyway (an open round's counters, a phase
  change) is skipped with a warning; a closed round's row that cannot be written is kept
  and written again on every tick until it is (:class:`PendingRows`).

What "accepted" promises: the report's task row (state ``reported``, the upload's digest
and this answer) is committed to SQLite before the answer is sent, so a retry gets the
same answer and the report is counted once; the update itself is folded into its round's
aggregate in memory, and reaches a model only if that round commits (the checkpoint
fsynced and its row committed in one transaction with the round's). A round that cannot
commit (a full disk, a server restart) is abandoned with every update it accepted, and
says so in ``GET /v1/rounds/<id>``.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from fedkb.server.errors import ApiError, error_response

log = logging.getLogger(__name__)

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
SQLITE_FULL = 13
RETRY_AFTER_S = 30


def is_storage_full(exc: BaseException) -> bool:
    """True for the errors a full disk (or a file size limit) raises."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or \
            "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


class StorageFull(ApiError):
    """507: the server cannot record this request now (``Retry-After`` says when to try)."""

    status, code = 507, "storage_full"

    def __init__(self, message: str, code: str | None = None,
                 retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s


def refuse_if_full(exc: BaseException, what: str) -> None:
    """Raise :class:`StorageFull` from ``exc`` if it is a full disk (else return)."""
    if is_storage_full(exc):
        log.error("cannot record %s: %s", what, exc)
        raise StorageFull(f"the server's storage is full: {what} was not recorded; "
                          f"retry later") from exc


def best_effort(write: Callable[[], Any], what: str) -> bool:
    """Run ``write``; on a full disk log it and go on (False). Other errors propagate."""
    try:
        write()
    except (OSError, sqlite3.OperationalError) as exc:
        if not is_storage_full(exc):
            raise
        log.warning("storage full: %s not written now (%s)", what, exc)
        return False
    return True


class PendingRows:
    """Closed rounds whose row could not be written: written again until they are."""

    def __init__(self) -> None:
        self._rows: dict[int, Callable[[], Any]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def write(self, round_id: int, write: Callable[[], Any]) -> None:
        """``write`` the row of round ``round_id`` now, or keep it for :meth:`retry`."""
        self._rows.pop(round_id, None)
        if not best_effort(write, f"round {round_id}'s row"):
            self._rows[round_id] = write

    def retry(self) -> None:
        for rid, write in list(self._rows.items()):
            if best_effort(write, f"round {rid}'s row"):
                del self._rows[rid]


def register_storage_full_handler(app: Any) -> None:
    """A full disk met anywhere in a request is 507 ``storage_full``, not a 500."""

    def _full(exc: Exception) -> Any:
        if not is_storage_full(exc):
            raise exc
        log.error("request failed, storage full: %s", exc)
        resp = error_response(StorageFull.status, StorageFull.code, "the server's storage "
                              "is full: the request was not recorded; retry later")
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp

    app.register_error_handler(sqlite3.OperationalError, _full)
    app.register_error_handler(OSError, _full)


__all__ = ["PendingRows", "StorageFull", "best_effort", "is_storage_full", "refuse_if_full",
           "register_storage_full_handler"]
