"""``fedkb server``: the federated server on a production WSGI server (waitress).

::

    fedkb server [--host 127.0.0.1] [--port 8000] [--state-dir DIR] [--config FILE]
                 [--model ARTIFACT_DIR] [--rounds R] [--threads N]

``--model`` publishes an exported artifact as version 0 (if the state dir has none);
``--rounds R`` stops scheduling training rounds after R commits (the server keeps
serving). Restarting on the same ``--state-dir`` resumes: the newest intact checkpoint is
served and a round left open is abandoned. Once listening, the server prints one line
``fedkb server listening on http://HOST:PORT`` and writes ``STATE_DIR/server.json``
(url, pid) so scripts using ``--port 0`` can find it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from fedkb.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the federated round server (waitress)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None, help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000; 0: any free)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="SQLite database and checkpoints (default ./fedkb-state)")
    p.add_argument("--config", type=Path, default=None, help="JSON or TOML config file")
    p.add_argument("--model", type=Path, default=None,
                   help="exported artifact directory to publish as version 0")
    p.add_argument("--rounds", type=int, default=None,
                   help="stop training after R committed rounds (keeps serving)")
    p.add_argument("--threads", type=int, default=None, help="WSGI worker threads (default 8)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop (cleanly) when the process that started this one is gone; "
                        "`fedkb demo` and `fedkb simulate` start their server this way")
    p.set_defaults(func=run)


def _watch_parent() -> None:
    """SIGTERM ourselves (a clean stop) once our parent process has died."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="fedkb-parent-watch", daemon=True).start()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from waitress.server import create_server

    from fedkb.server.app import create_app
    from fedkb.server.config import load_config

    if args.rounds is not None and args.rounds < 0:
        raise UserError("--rounds must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    config = load_config(args.config, host=args.host, port=args.port, state_dir=args.state_dir,
                         model=args.model, max_rounds=args.rounds, threads=args.threads)
    app = create_app(config)
    state = app.extensions["fedkb"]
    limit = state.max_upload_bytes + 1024
    try:
        # Model uploads and weight downloads are megabytes: waitress's defaults read a
        # request 8 kB per call and spool bodies over 512 kB (responses over 1 MB) to temp
        # files; in a 20-round fleet run that was ~15% of the server's CPU.
        server = create_server(app, host=config.host, port=config.port, threads=config.threads,
                               max_request_body_size=limit, channel_timeout=60,
                               connection_limit=1000, ident="fedkb", recv_bytes=1 << 18,
                               inbuf_overflow=limit, outbuf_overflow=64 << 20)
    except OSError as exc:
        state.close()
        raise UserError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
    url = f"http://{config.host}:{server.effective_port}"  # type: ignore[union-attr]
    (config.state_dir / "server.json").write_text(json.dumps({"url": url, "pid": os.getpid()}))
    state.start_ticker()
    signal.signal(signal.SIGTERM, _interrupt)
    if args.exit_with_parent:
        _watch_parent()
    token_note = ("admin token from config/$FEDKB_ADMIN_TOKEN" if config.admin_token
                  or os.environ.get("FEDKB_ADMIN_TOKEN")
                  else f"admin token in {config.state_dir / 'admin_token'}")
    print(f"fedkb server listening on {url} (state {config.state_dir}, {token_note})",
          flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        state.close()
    print("fedkb server stopped", file=sys.stderr)
    return 0
