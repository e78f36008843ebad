"""Progress bars (tqdm) for the engines: federated rounds and central training steps.

Each returns a callback for its engine's ``on_progress`` / ``progress`` hook and closes
its bar when the work is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def round_bar(total: int) -> Callable[[dict[str, Any], dict[str, Any] | None, float], None]:
    """A bar of ``total`` committed rounds, for the fleet's ``on_progress(snapshot, status,
    sim_now)``; its postfix shows the fleet's uploads, late reports and aborts."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="federated rounds", unit="round")

    def update(snapshot: dict[str, Any], status: dict[str, Any] | None,
               _sim_now: float) -> None:
        done = min(total, (status or {}).get("rounds_committed", 0))
        if done > bar.n:
            bar.update(done - bar.n)
        c = snapshot["counts"]
        bar.set_postfix_str(f"uploads {c.get('completed', 0)} late {c.get('late', 0)} "
                            f"aborts {sum(snapshot['aborted'].values())}"
                            f"{bytes_postfix(status)}", refresh=False)
        if done >= total:
            bar.close()

    return update


def bytes_postfix(status: dict[str, Any] | None) -> str:
    """The last round's bytes for the progress line: per update on the wire (and how many
    times smaller than float32), and what its phones downloaded, e.g.
    ``| q4 up 0.72 MB/update (7.5x less) down 41.3 MB/round``."""
    comm = (status or {}).get("communication") or {}
    last, raw = comm.get("last_round") or {}, comm.get("float32_update_bytes")
    per = last.get("upload_bytes_median")
    if not per:
        return ""
    saved = f" ({raw / per:.1f}x less)" if raw else ""
    return (f" | {comm.get('encoding')} up {per / 1e6:.2f} MB/update{saved} "
            f"down {last.get('download_bytes', 0) / 1e6:.1f} MB/round")


def step_bar() -> Callable[[int, int, float], None]:
    """A bar of central training steps, for ``train_central(progress=...)``: it opens on
    the first step (when the total is known) and shows the loss."""
    from tqdm import tqdm

    bar = None

    def update(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="central training", unit="step")
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step == total:
            bar.close()

    return update
