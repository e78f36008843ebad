"""A real `fedkb server` as a child process: started, waited for, always stopped.

:class:`ServerProcess` starts the server in its own process group (so nothing it starts
can outlive it), waits until it listens (its ``server.json``), and always kills the group
on exit, whatever happened (an exception, Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class ServerProcess:
    """``with ServerProcess(state_dir, model=..., config=...) as url: ...``"""

    def __init__(self, state_dir: Path, model: Path | None = None, config: Path | None = None,
                 rounds: int | None = None, host: str = "127.0.0.1", port: int = 0,
                 log: Path | None = None, admin_token: str | None = None,
                 threads: int | None = None):
        self.state_dir = Path(state_dir)
        self.cmd = [sys.executable, "-m", "fedkb", "server", "--host", host, "--port",
                    str(port), "--state-dir", str(self.state_dir), "--exit-with-parent"]
        if model is not None:
            self.cmd += ["--model", str(model)]
        if config is not None:
            self.cmd += ["--config", str(config)]
        if rounds is not None:
            self.cmd += ["--rounds", str(rounds)]
        if threads is not None:
            self.cmd += ["--threads", str(threads)]
        self.log = log or self.state_dir.parent / f"{self.state_dir.name}.log"
        self.env = {**os.environ, **({"FEDKB_ADMIN_TOKEN": admin_token} if admin_token else {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 90.0) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        info = self.state_dir / "server.json"
        info.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"fedkb server exited with {self.proc.returncode}:\n{tail}")
            if info.exists():
                with contextlib.suppress(ValueError, OSError):
                    data = json.loads(info.read_text())
                    if data.get("pid") == self.proc.pid:
                        self.url = data["url"]
                        return self.url
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fedkb server did not start within {timeout:.0f}s (log {self.log})")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
