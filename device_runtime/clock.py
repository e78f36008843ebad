"""Simulated time for the fleet, and how it relates to the server's wall-clock deadlines.

The server lives in wall-clock time: its selection windows, reporting deadlines and
"come back in N s" answers are wall seconds. The phones live in simulated time that runs
``speedup`` times faster, so that a day of charging/idle/network behaviour passes in
minutes (speedup 720: a day in two minutes). Everything a phone does takes simulated
time: a download of B bytes takes B / bandwidth simulated seconds, a training step takes
the measured LiteRT step time x the tier's compute factor. A phone realises a simulated
duration d by waiting d / speedup wall seconds (less whatever real computing it already
did), so a server deadline of D wall seconds is ``speedup * D`` seconds of phone time.
Configure the server's deadlines with that in mind (see the fleet docs).

``t = 0`` is midnight UTC of day 0; ``start_hour`` lets a run begin at, say, 22:00 UTC.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class SimClock:
    speedup: float = 60.0
    start_hour: float = 0.0
    _wall0: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.speedup <= 0:
            raise ValueError("speedup must be positive")

    def now(self) -> float:
        """Simulated seconds since midnight UTC of day 0."""
        return self.start_hour * 3600.0 + (time.monotonic() - self._wall0) * self.speedup

    def wall_for(self, sim_seconds: float) -> float:
        """Wall seconds that ``sim_seconds`` of simulated time take (never negative)."""
        return max(0.0, sim_seconds) / self.speedup

    def stop(self) -> None:
        """Mark the clock stopped: the fleet is shutting down (its loops see :attr:`stopped`)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()
