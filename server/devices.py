"""The registry of devices: who exists, in which population (train or held-out users),
and how fast new ones may join.

Rows live in SQLite; a read-mostly in-memory map answers the per-request lookups so a
check-in does not touch the database.

Registration is open (a phone needs no credential to join), so it is rate limited
(:class:`RegistrationLimiter`): at most ``registrations_per_minute_per_address`` from one
client address and ``registrations_per_minute`` in all, over any 60 s; beyond that
``POST /v1/devices`` answers 429 ``rate_limited`` with ``Retry-After``. This bounds how
fast an attacker gets seats; it does not stop one who is patient or has many addresses
(README.md, "Security model"): device attestation is what closes that in production.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections import Counter, deque
from collections.abc import Callable

from fedkb.server.db import Database
from fedkb.server.errors import TooManyRequests, Unauthorized

WINDOW_S = 60.0  # the limits count registrations over the last minute


class RegistrationLimiter:
    """Sliding-window limits on registrations per client address and in total.

    Memory is one timestamp per registration admitted in the last minute (refused
    attempts leave nothing), so it is bounded by the total limit.
    """

    def __init__(self, per_address: int | None, total: int | None,
                 clock: Callable[[], float]) -> None:
        self.per_address, self.total, self.clock = per_address, total, clock
        self._lock = threading.Lock()
        self._all: deque[tuple[float, str]] = deque()
        self._by_address: dict[str, deque[float]] = {}

    def admit(self, address: str) -> None:
        """Count one registration from ``address``, or raise :class:`TooManyRequests`
        saying how many seconds until a slot frees up."""
        if self.per_address is None and self.total is None:
            return
        with self._lock:
            now = self.clock()
            self._forget_before(now - WINDOW_S)
            mine = self._by_address.get(address)
            if self.per_address is not None and mine and len(mine) >= self.per_address:
                self._refuse(mine[0] + WINDOW_S - now, f"from {address}",
                             self.per_address)
            if self.total is not None and len(self._all) >= self.total:
                self._refuse(self._all[0][0] + WINDOW_S - now, "in all", self.total)
            self._all.append((now, address))
            self._by_address.setdefault(address, deque()).append(now)

    def _forget_before(self, cutoff: float) -> None:
        while self._all and self._all[0][0] <= cutoff:
            _, address = self._all.popleft()
            mine = self._by_address[address]
            mine.popleft()
            if not mine:
                del self._by_address[address]

    @staticmethod
    def _refuse(wait_s: float, where: str, limit: int) -> None:
        retry = max(1, math.ceil(wait_s))
        raise TooManyRequests(f"too many registrations {where}: at most {limit} a minute; "
                              f"retry in {retry} s", "rate_limited", retry_after_s=retry)


class DeviceRegistry:
    def __init__(self, db: Database, clock: Callable[[], float],
                 limiter: RegistrationLimiter | None = None) -> None:
        self.db = db
        self.clock = clock
        self.limiter = limiter
        self._lock = threading.Lock()
        self._population: dict[str, str] = {
            r["id"]: r["population"] for r in db.query("SELECT id, population FROM devices")}
        self._counts = Counter(self._population.values())

    def register(self, population: str, name: str = "", address: str | None = None) -> str:
        """A new device id. ``address``: the client address of a registration over HTTP,
        held to the limiter's limits (in-process callers pass none)."""
        if address is not None and self.limiter is not None:
            self.limiter.admit(address)
        device_id = "d-" + secrets.token_hex(8)
        self.db.insert("devices", {"id": device_id, "population": population, "name": name[:64],
                                   "registered_at": self.clock()})
        with self._lock:
            self._population[device_id] = population
            self._counts[population] += 1
        return device_id

    def population(self, device_id: str) -> str:
        """The device's population; :class:`Unauthorized` if the server does not know it."""
        pop = self._population.get(device_id)
        if pop is None:
            raise Unauthorized(f"unknown device {device_id}; register again", "unknown_device")
        return pop

    def count(self, population: str | None = None) -> int:
        return len(self._population) if population is None else self._counts[population]
