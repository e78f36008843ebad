"""``fedkb server``: the federated server on a production WSGI server (waitress).

::

    fedkb server [--host 127.0.0.1] [--port 8000] [--state-dir DIR] [--config FILE]
                 [--model ARTIFACT_DIR] [--rounds R] [--threads N] [--idle-timeout S]
                 [--max-request-time S]

``--model`` publishes an exported artifact as version 0 (if the state dir has none);
``--rounds R`` stops scheduling training rounds after R commits (the server keeps
serving). Restarting on the same ``--state-dir`` resumes: the newest intact checkpoint is
served and a round left open is abandoned. Once listening, the server prints one line
``fedkb server listening on http://HOST:PORT`` and writes ``STATE_DIR/server.json``
(url, pid) so scripts using ``--port 0`` can find it.

One server per state directory: it holds ``STATE_DIR/lock`` while it runs, and a second
one on the same directory exits with status 2 at once ("state dir X is in use by another
fedkb server (pid N)") instead of abandoning the first one's rounds. Errors are JSON,
including the ones waitress answers itself (body too large, unparsable request); a
connection idle for ``--idle-timeout`` seconds while no request of it is being answered
(a client that sent less than its ``Content-Length``) is closed, and so is one whose
request has not fully arrived after ``--max-request-time`` seconds (a trickling client);
both flags override the config's ``idle_timeout_s`` and ``max_request_s``. At
``connection_limit`` open connections the longest-idle ones are closed to accept new ones.
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
    p.add_argument("--idle-timeout", type=int, default=None, metavar="S",
                   help="close a connection idle for S seconds while none of its requests "
                        "is being answered (config idle_timeout_s, default 15)")
    p.add_argument("--max-request-time", type=float, default=None,
                   metavar="S", help="close a connection whose request (headers and body) "
                   "has not arrived after S seconds (config max_request_s, default 300; "
                   "0: no limit)")
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
    from fedkb.server.app import create_app
    from fedkb.server.config import load_config
    from fedkb.server.state_dir import StateLock
    from fedkb.server.wsgi import make_server

    if args.rounds is not None and args.rounds < 0:
        raise UserError("--rounds must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    config = load_config(args.config, host=args.host, port=args.port, state_dir=args.state_dir,
                         model=args.model, max_rounds=args.rounds, threads=args.threads,
                         idle_timeout_s=args.idle_timeout, max_request_s=args.max_request_time)
    os.umask(0o077)  # whatever this process writes in the state dir is its own
    # before create_app: opening the state dir abandons the rounds left open in it
    lock = StateLock(config.state_dir).acquire()
    try:
        app = create_app(config)
    except BaseException:
        lock.release()
        raise
    state = app.extensions["fedkb"]
    try:
        server = make_server(app, host=config.host, port=config.port, threads=config.threads,
                             max_body_bytes=state.max_upload_bytes + 1024,
                             idle_timeout_s=config.idle_timeout_s,
                             max_request_s=config.max_request_s,
                             connection_limit=config.connection_limit)
    except OSError as exc:
        state.close()
        lock.release()
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
        lock.release()
    print("fedkb server stopped", file=sys.stderr)
    return 0
