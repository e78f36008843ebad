"""Device availability traces: when a phone is charging, on which network, idle, how full.

A trace is piecewise constant in *simulated* seconds since the fleet's epoch (t=0 is
midnight UTC of day 0): row i holds from ``t[i]`` until ``t[i+1]``. Each row has:

- ``charging`` (bool): plugged in;
- ``network``: ``wifi`` (unmetered), ``cell`` (metered) or ``offline``;
- ``idle`` (bool): screen off and not in use;
- ``battery`` (a fraction, 0..1, like every battery level in fedkb): the level when the
  row starts.

A phone may train only when ``charging and network == "wifi" and idle`` (Bonawitz et al.
2019, §2; Hard et al. 2018); when it may not, :meth:`State.why_not` says why in the
server's words (:data:`fedkb.wire.INELIGIBILITY_REASONS`), or ``offline``. FedScale
showed availability is dominated by charging at night; :func:`diurnal_trace` generates
that pattern from a seed, in the phone's local time.

Plain-text schema (so users can replay real traces; no pickles)::

    CSV  header: device,t,charging,network,idle,battery
         one row per state change; t in seconds (float), charging/idle as 0/1
    JSON {"devices": {"<device>": [[t, charging, network, idle, battery], ...]}}

In the files ``battery`` is a percentage (0..100), as battery levels are usually logged;
:func:`load_traces` divides it by 100 and :func:`save_traces` multiplies it back.

A device's rows must be sorted by t; the first row's t is where the trace starts (before
it the phone counts as unavailable and offline). After the last row the last state holds.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedkb import wire

NETWORKS = ("offline", "cell", "wifi")
_NET_CODE = {n: i for i, n in enumerate(NETWORKS)}
DAY = 86_400.0
# The abort reason of a phone that lost its network altogether (it could not even check
# in, so the server never gives it as a reason); the others are the server's words.
OFFLINE = "offline"


@dataclass(frozen=True)
class State:
    charging: bool
    network: str
    idle: bool
    battery: float

    @property
    def eligible(self) -> bool:
        """Charging, on an unmetered network, and idle: the phone may run a task."""
        return self.charging and self.network == "wifi" and self.idle

    def conditions(self) -> wire.Conditions:
        """What the phone reports about itself at check-in in this state."""
        return wire.Conditions(self.charging, self.network == "wifi", self.idle, self.battery)

    def why_not(self) -> str | None:
        """The first reason the phone may not train (used as an abort reason), or None:
        the server's reason for these conditions, or :data:`OFFLINE` without a network.
        The battery level is the job scheduler's business (the worker), not a task's."""
        reason = self.conditions().ineligibility()
        return OFFLINE if reason == wire.METERED_NETWORK and self.network == "offline" \
            else reason


_OFF = State(False, "offline", False, 0.0)


class Trace:
    """One device's trace as compact arrays (a few hundred bytes per simulated day)."""

    __slots__ = ("battery", "flags", "t")

    def __init__(self, t: np.ndarray, charging: np.ndarray, network: np.ndarray,
                 idle: np.ndarray, battery: np.ndarray):
        t = np.asarray(t, dtype=np.float64)
        if t.ndim != 1 or len(t) == 0:
            raise ValueError("a trace needs at least one row")
        if np.any(np.diff(t) < 0):
            raise ValueError("trace rows must be sorted by time")
        net = np.asarray(network, dtype=np.int64)
        if np.any((net < 0) | (net >= len(NETWORKS))):
            raise ValueError("bad network code in trace")
        self.t = t
        # bit 0 charging, bit 1 idle, bits 2-3 network code
        self.flags = (np.asarray(charging, bool).astype(np.uint8)
                      | (np.asarray(idle, bool).astype(np.uint8) << 1)
                      | (net.astype(np.uint8) << 2))
        self.battery = np.clip(np.asarray(battery, dtype=np.float32), 0, 1).astype(np.float16)

    def __len__(self) -> int:
        return len(self.t)

    def _row(self, t: float) -> int:
        return int(np.searchsorted(self.t, t, side="right")) - 1

    def state_at(self, t: float) -> State:
        i = self._row(t)
        if i < 0:
            return _OFF
        f = int(self.flags[i])
        # float16 holds a level to ~0.0005: report it to a tenth of a percent
        return State(bool(f & 1), NETWORKS[(f >> 2) & 3], bool(f & 2),
                     round(float(self.battery[i]), 3))

    def next_change(self, t: float) -> float | None:
        """The simulated time of the next row after ``t`` (None: the state never changes)."""
        i = self._row(t) + 1
        return float(self.t[i]) if i < len(self.t) else None

    def next_eligible(self, t: float) -> float | None:
        """The earliest time >= ``t`` at which the phone is eligible (None: never again)."""
        if self.state_at(t).eligible:
            return t
        ok = (self.flags & 0b1111) == (1 | 2 | (_NET_CODE["wifi"] << 2))
        later = np.nonzero(ok & (self.t > t))[0]
        return float(self.t[later[0]]) if len(later) else None

    def next_ineligible(self, t: float) -> float | None:
        """The earliest time >= ``t`` at which the phone is not eligible (None: never)."""
        if not self.state_at(t).eligible:
            return t
        ok = (self.flags & 0b1111) == (1 | 2 | (_NET_CODE["wifi"] << 2))
        later = np.nonzero(~ok & (self.t > t))[0]
        return float(self.t[later[0]]) if len(later) else None

    def eligible_seconds(self, start: float, end: float, min_battery: float = 0.0) -> float:
        """Simulated seconds in ``[start, end)`` the phone is eligible with at least
        ``min_battery`` (the last row holds for ever; before the first: offline)."""
        ok = ((self.flags & 0b1111) == (1 | 2 | (_NET_CODE["wifi"] << 2))) \
            & (self.battery.astype(np.float64) >= min_battery)
        lo = np.clip(self.t, start, end)
        hi = np.clip(np.append(self.t[1:], np.inf), start, end)
        return float(np.sum((hi - lo)[ok]))

    def rows(self) -> list[tuple[float, bool, str, bool, float]]:
        out = []
        for t in self.t:
            s = self.state_at(float(t))
            out.append((float(t), s.charging, s.network, s.idle, s.battery))
        return out


def diurnal_trace(rng: np.random.Generator, tz_hours: float = 0.0, days: int = 2,
                  step_s: float = 300.0) -> Trace:
    """A realistic day-night pattern, in local time shifted by ``tz_hours``.

    Overnight: plugged in between ~22:00-01:30 and ~06:00-08:30, on Wi‑Fi, mostly idle
    (a few short wake-ups). Daytime: on cellular or Wi‑Fi, in use in bursts, with a chance
    of a short top-up charge. Battery drains when unplugged, fills when charging.
    ``step_s`` is the resolution of the simulated state (5 minutes by default).
    """
    n = int(days * DAY / step_s)
    t = np.arange(n) * step_s
    local_h = ((t / 3600.0) + tz_hours) % 24.0
    day_idx = ((t / 3600.0 + tz_hours) // 24.0).astype(int)
    n_days = int(day_idx.max()) + 2
    plug = rng.normal(23.3, 0.9, n_days)  # bed time
    unplug = rng.normal(7.0, 0.7, n_days)  # wake time
    charging = np.zeros(n, bool)
    for d in range(-1, n_days - 1):
        start = d * 24.0 + plug[d + 1]
        stop = (d + 1) * 24.0 + unplug[d + 1]
        h_abs = t / 3600.0 + tz_hours
        charging |= (h_abs >= start) & (h_abs < stop)
    # daytime top-up charges (about one day in three), 30-90 minutes
    for d in range(n_days):
        if rng.random() < 0.35:
            s = d * 24.0 + rng.uniform(10, 20)
            h_abs = t / 3600.0 + tz_hours
            charging |= (h_abs >= s) & (h_abs < s + rng.uniform(0.5, 1.5))
    night = (local_h >= 21) | (local_h < 8)
    home = night | (rng.random(n) < 0.25)
    network = np.where(home, _NET_CODE["wifi"], _NET_CODE["cell"])
    network = np.where(rng.random(n) < 0.02, _NET_CODE["offline"], network)
    # idle: asleep -> mostly idle; awake -> in use about 40% of the time, in bursts
    asleep = charging & night
    use = _bursts(rng, n, p_start=0.25, mean_len=2.0)
    idle = np.where(asleep, rng.random(n) > 0.04, ~use)
    return _compress(t, charging, network, idle, start_level=rng.uniform(0.3, 0.9),
                     step_s=step_s)


def _bursts(rng: np.random.Generator, n: int, p_start: float, mean_len: float) -> np.ndarray:
    """Steps covered by bursts that start with probability ``p_start`` per step."""
    idx = np.arange(n)
    starts = rng.random(n) < p_start
    lengths = np.maximum(1, rng.exponential(mean_len, n).astype(np.int64))
    ends = np.where(starts, idx + lengths, 0)
    return np.maximum.accumulate(ends) > idx


def _compress(t, charging, network, idle, start_level: float, step_s: float) -> Trace:
    """Keep only rows where a discrete field changes; battery at those rows.

    The battery fills 6% per 5 minutes on the charger and drains ~0.9% per 5 minutes off
    it, clipped to [0.02, 1].
    """
    change = np.ones(len(t), bool)
    change[1:] = ((charging[1:] != charging[:-1]) | (network[1:] != network[:-1])
                  | (idle[1:] != idle[:-1]))
    rows = np.nonzero(change)[0]
    steps = np.diff(np.append(rows, len(t)))
    battery = np.empty(len(rows), np.float32)
    level = start_level
    for i, (r, k) in enumerate(zip(rows, steps, strict=True)):
        battery[i] = level
        rate = 0.06 if charging[r] else -0.009
        level = min(1.0, max(0.02, level + rate * k * step_s / 300.0))
    return Trace(t[rows], charging[rows], network[rows], idle[rows], battery)


# --- plain-text trace files --------------------------------------------------------------


def load_traces(path: str | Path) -> dict[str, Trace]:
    """Read a CSV or JSON trace file (schema in the module docstring; battery in percent,
    returned as a fraction)."""
    path = Path(path)
    rows: dict[str, list[tuple[float, bool, str, bool, float]]] = {}
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(path.read_text(encoding="utf-8"))
            for dev, items in doc["devices"].items():
                rows[str(dev)] = [(float(r[0]), bool(r[1]), str(r[2]), bool(r[3]),
                                   float(r[4]) / 100.0) for r in items]
        else:
            with path.open(newline="", encoding="utf-8") as fh:
                for r in csv.DictReader(fh):
                    rows.setdefault(r["device"], []).append(
                        (float(r["t"]), r["charging"].strip() in ("1", "true", "True"),
                         r["network"].strip(), r["idle"].strip() in ("1", "true", "True"),
                         float(r["battery"]) / 100.0))
    except (KeyError, IndexError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a valid trace file ({exc!r})") from None
    out = {}
    for dev, rs in rows.items():
        bad = [r[2] for r in rs if r[2] not in _NET_CODE]
        if bad:
            raise ValueError(f"{path}: device {dev}: unknown network {bad[0]!r} "
                             f"(expected one of {', '.join(NETWORKS)})")
        try:
            out[dev] = Trace(np.array([r[0] for r in rs]), np.array([r[1] for r in rs]),
                             np.array([_NET_CODE[r[2]] for r in rs]),
                             np.array([r[3] for r in rs]), np.array([r[4] for r in rs]))
        except ValueError as exc:
            raise ValueError(f"{path}: device {dev}: {exc}") from None
    if not out:
        raise ValueError(f"{path}: no trace rows")
    return out


def save_traces(traces: dict[str, Trace], path: str | Path) -> None:
    """Write traces as CSV (or JSON when ``path`` ends in .json), battery in percent."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        doc = {"devices": {d: [[t, c, net, idle, round(b * 100.0, 1)]
                               for t, c, net, idle, b in tr.rows()]
                           for d, tr in traces.items()}}
        path.write_text(json.dumps(doc), encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["device", "t", "charging", "network", "idle", "battery"])
        for dev, tr in traces.items():
            for t, c, net, idle, b in tr.rows():
                w.writerow([dev, f"{t:g}", int(c), net, int(idle), f"{b * 100.0:.1f}"])
