"""The real server's own edge (waitress): JSON errors, stalled clients, one server per state dir.

Each test starts at most two ``fedkb server`` processes on 127.0.0.1 and always stops
them (:class:`ServerProcess`); sockets have timeouts, so nothing here can hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from server_support import E2E_ADMIN, write_artifact

from fedkb.server.config import ServerConfig
from fedkb.server.errors import __doc__ as ERRORS_DOC
from fedkb.server.state_dir import StateDirInUse, StateLock
from fedkb.simulation.server_process import ServerProcess
from fedkb.wire import UPLOAD_CONTENT_TYPE


def server(tmp_path: Path, name: str = "state", *flags: str) -> ServerProcess:
    sp = ServerProcess(tmp_path / name, model=write_artifact(tmp_path / "artifact"),
                       admin_token=E2E_ADMIN)
    sp.cmd += list(flags)
    return sp


def raw_exchange(url: str, request: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``request`` on a fresh socket; everything the server answers until it closes."""
    parts = urlsplit(url)
    t0 = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - t0


def split_answer(answer: bytes) -> tuple[int, dict]:
    """The status and the JSON body of a raw HTTP answer (asserting it is JSON)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer[:400]
    err = json.loads(body)
    assert f"``{err['error']['code']}``" in (ERRORS_DOC or ""), err
    return int(head.split()[1]), err


def json_error(resp: requests.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:300]
    err = resp.json()["error"]
    assert err["code"] == code and f"``{code}``" in (ERRORS_DOC or "")


@pytest.mark.e2e
def test_waitress_refusals_are_json_too(tmp_path):
    with server(tmp_path) as url:
        # over waitress's own body limit: refused on the headers, before the app runs
        head = (f"POST /v1/tasks/x/result HTTP/1.1\r\nHost: x\r\nContent-Type: "
                f"{UPLOAD_CONTENT_TYPE}\r\nContent-Length: {64 << 20}\r\n\r\n").encode()
        status, body = split_answer(raw_exchange(url, head + b"\0" * 1000)[0])
        assert status == 413 and body["error"]["code"] == "payload_too_large", body
        # a request waitress cannot parse (Content-Length not a number)
        status, body = split_answer(raw_exchange(
            url, b"POST /v1/devices HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")[0])
        assert status == 400 and body["error"]["code"] == "http_error", body
        # the same body limit through an ordinary client
        big = b"\0" * (256 << 10)
        with contextlib.suppress(requests.ConnectionError):  # it may close while we send
            json_error(requests.post(f"{url}/v1/tasks/x/result", data=big, timeout=30,
                                     headers={"Content-Type": UPLOAD_CONTENT_TYPE}),
                       413, "payload_too_large")
        # the app's own refusals of hostile input, through waitress
        json_header = {"Content-Type": "application/json"}
        for text in ("[" * 30_000, '{"population": "train", "name": "\\ud800"}',
                     '{"population": "train", "name": ' + "7" * 5000 + "}"):
            json_error(requests.post(f"{url}/v1/devices", data=text, headers=json_header,
                                     timeout=10), 400, "bad_json")
        json_error(requests.get(f"{url}/v1/rounds/{'9' * 30}", timeout=10), 404, "not_found")
        json_error(requests.get(f"{url}/v1/rounds?before={'9' * 30}", timeout=10), 400,
                   "bad_query")
        assert requests.get(f"{url}/v1/status", timeout=10).status_code == 200


@pytest.mark.e2e
def test_a_body_shorter_than_its_content_length_is_cut_off(tmp_path):
    with server(tmp_path, "state", "--idle-timeout", "2") as url:
        parts = urlsplit(url)
        stalled = socket.create_connection((parts.hostname, parts.port), timeout=15)
        try:
            stalled.sendall(b"POST /v1/devices HTTP/1.1\r\nHost: x\r\nContent-Type: "
                            b"application/json\r\nContent-Length: 1000\r\n\r\n0123456789")
            t0 = time.monotonic()
            # the others are served meanwhile
            assert requests.get(f"{url}/v1/status", timeout=5).status_code == 200
            with contextlib.suppress(ConnectionResetError):
                while stalled.recv(65536):
                    pass
            assert time.monotonic() - t0 < 8  # closed after ~2 s idle (+ the cleanup tick)
        finally:
            stalled.close()
        assert requests.get(f"{url}/v1/status", timeout=5).status_code == 200


@pytest.mark.e2e
def test_a_client_trickling_its_request_is_cut_off(tmp_path):
    with server(tmp_path, "state", "--idle-timeout", "30", "--max-request-time", "2") as url:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=15) as s:
            s.sendall(b"POST /v1/devices HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            t0, closed = time.monotonic(), False
            while time.monotonic() - t0 < 10 and not closed:
                time.sleep(0.5)  # a byte every half second: never idle for 30 s
                try:
                    s.sendall(b"x")
                except OSError:
                    closed = True
                    break
                s.settimeout(0.01)
                try:
                    closed = s.recv(1) == b""
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:  # reset: closed with our bytes unread
                    closed = True
                s.settimeout(15)
            assert closed and time.monotonic() - t0 < 6
        assert requests.get(f"{url}/v1/status", timeout=5).status_code == 200


def test_the_default_time_bounds_are_minutes_not_hours():
    assert 5 <= ServerConfig().idle_timeout_s <= 30
    assert 60 <= ServerConfig().max_request_s <= 600


def test_state_lock_is_exclusive_and_names_its_holder(tmp_path):
    held = rf"in use by another fedkb server \(pid {os.getpid()}\)"
    with StateLock(tmp_path / "state"), pytest.raises(StateDirInUse, match=held):
        StateLock(tmp_path / "state").acquire()
    with StateLock(tmp_path / "state"):  # released: free again
        pass


@pytest.mark.e2e
def test_a_second_server_on_a_live_state_dir_refuses_to_start(tmp_path):
    first = server(tmp_path)
    with first as url:
        admin = {"Authorization": f"Bearer {E2E_ADMIN}"}
        before = requests.get(f"{url}/v1/status", timeout=10).json()["open_rounds"][0]["id"]
        second = subprocess.run(
            [sys.executable, "-m", "fedkb", "server", "--host", "127.0.0.1", "--port", "0",
             "--state-dir", str(first.state_dir)],
            capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].endswith(f"state dir {first.state_dir} is in use by another fedkb "
                                 f"server (pid {first.proc.pid})"), lines
        with sqlite3.connect(first.state_dir / "fedkb.db") as conn:  # nothing abandoned
            assert conn.execute("SELECT COUNT(*) FROM rounds WHERE state = 'abandoned'"
                                ).fetchone()[0] == 0
        assert requests.get(f"{url}/v1/status", timeout=10).json()["open_rounds"][0]["id"] == before
        assert requests.get(f"{url}/v1/admin/round-config", headers=admin,
                            timeout=10).status_code == 200
    with server(tmp_path) as url:  # the first one stopped: the lock went with it
        assert requests.get(f"{url}/v1/status", timeout=10).status_code == 200
