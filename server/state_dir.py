"""The state directory's protection: private modes, private files, one server at a time.

The directory holds what lets anyone act as the server (``secret_key`` signs device
tokens, ``admin_token`` opens ``/v1/admin``) and every device's records, so it is 0700
and its secret files and database are 0600, whatever the caller's umask (an existing,
older directory is tightened on start).

:class:`StateLock` is an exclusive :func:`fcntl.flock` on ``STATE/lock``, held for the
life of a ``fedkb server`` process (the kernel drops it when the process ends, however
it ends): a second server on the same directory would abandon the first one's open
rounds and then write next to it. The lock file holds the owner's pid, for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from fedkb.errors import UserError

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_FILE = "lock"


def secure_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


def make_private(path: Path) -> None:
    """Make an existing file 0600 (no-op if it does not exist)."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_mode & 0o777 != FILE_MODE:
            os.chmod(path, FILE_MODE)


def read_private(path: Path) -> str | None:
    """The stripped text of the secret file ``path`` (made 0600), or None if absent."""
    if not path.is_file():
        return None
    make_private(path)
    return path.read_text(encoding="utf-8").strip()


def write_private(path: Path, text: str) -> None:
    """Write a secret file, 0600 from the first byte (atomic: a crash leaves none or all)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class StateDirInUse(UserError):
    """Another process holds the state directory's lock."""


class StateLock:
    """``STATE/lock``, held exclusively until :meth:`release` or the process's end."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock now, or raise :class:`StateDirInUse` naming the holder's pid."""
        secure_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateDirInUse(f"state dir {self.path.parent} is in use by another fedkb "
                                f"server (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["StateDirInUse", "StateLock", "make_private", "read_private", "secure_dir",
           "write_private"]
