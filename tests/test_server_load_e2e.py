"""Load at the HTTP edge (issue 19, items 5 and 11): shed predictions, idle-socket floods.

Real sockets on 127.0.0.1 against the production WSGI stack in this process
(:class:`live_server.LiveServer`); every wait is bounded and every socket closed.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from types import SimpleNamespace

import pytest
import requests
from live_server import LiveServer
from server_support import ELIGIBLE, make_config

from fedkb.server.admission import AdmissionGate, gate_size, queued_s
from fedkb.server.api_predict import GATE
from fedkb.server.app import create_app
from fedkb.server.errors import ServiceUnavailable
from fedkb.server.wsgi import QUEUED_AT, TwoLaneQueue

PREDICT = {"text": "the cat", "k": 3}


def _phone(url: str) -> dict[str, str]:
    r = requests.post(f"{url}/v1/devices", json={"population": "train"}, timeout=10)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _checkin(url: str, auth: dict[str, str], timeout: float = 10.0) -> requests.Response:
    return requests.post(f"{url}/v1/checkin", json={"conditions": ELIGIBLE}, headers=auth,
                         timeout=timeout)


def test_the_gate_admits_its_limit_and_refuses_the_next_at_once():
    gate = AdmissionGate(2, retry_after_s=3)
    with gate.admit(), gate.admit():
        assert gate.inflight == 2
        t0 = time.perf_counter()
        with pytest.raises(ServiceUnavailable) as exc, gate.admit():
            pass
        assert time.perf_counter() - t0 < 0.05
        assert exc.value.status == 503 and exc.value.code == "overloaded"
        assert exc.value.retry_after_s == 3
    with gate.admit():  # slots come back, also after an error inside the block
        pass
    with contextlib.suppress(RuntimeError), gate.admit():
        raise RuntimeError
    assert (gate.inflight, gate.admitted, gate.shed) == (0, 4, 1)
    # predictions never take every WSGI thread
    assert gate_size(4, 8) == 4 and gate_size(50, 8) == 6 and gate_size(4, 2) == 1


def test_device_requests_wait_ahead_of_predictions():
    def channel(path: str) -> SimpleNamespace:
        return SimpleNamespace(requests=[SimpleNamespace(path=path, headers={})], name=path)

    q = TwoLaneQueue()
    for path in ("/v1/predict", "/v1/predict", "/v1/checkin", "/v1/predict",
                 "/v1/tasks/t/result", "/v1/status"):
        q.append(channel(path))
    q.append(SimpleNamespace(requests=[]))  # no parsed request yet: first lane
    assert len(q) == 7
    popped = [q.popleft() for _ in range(7)]
    assert [getattr(c, "name", "-") for c in popped] == [
        "/v1/checkin", "/v1/tasks/t/result", "/v1/status", "-",
        "/v1/predict", "/v1/predict", "/v1/predict"]
    assert len(q) == 0
    # predictions carry when they started waiting, device requests nothing
    stamp = float(popped[-1].requests[0].headers[QUEUED_AT])
    assert 0 <= time.monotonic() - stamp < 5 and popped[0].requests[0].headers == {}
    environ = {"HTTP_" + QUEUED_AT: repr(stamp)}
    assert queued_s(environ, now=stamp + 2.0) == pytest.approx(2.0)
    assert queued_s({}) == 0.0 and queued_s({"HTTP_" + QUEUED_AT: "soon"}) == 0.0
    gate = AdmissionGate(4)
    with pytest.raises(ServiceUnavailable, match=r"waited 2\.00 s"), gate.admit(2.0, 0.25):
        pass
    assert gate.inflight == 0 and gate.shed == 1


@pytest.mark.e2e
def test_a_full_predict_gate_sheds_at_once_while_checkins_are_served(tmp_path):
    app = create_app(make_config(tmp_path, threads=8))
    gate: AdmissionGate = app.extensions[GATE]
    assert gate.limit == 4  # predict.max_inflight, the default
    with LiveServer(app, threads=8) as url, contextlib.ExitStack() as held:
        auth = _phone(url)
        for _ in range(gate.limit):  # every slot taken, as by slow predictions
            held.enter_context(gate.admit())
        for _ in range(20):
            t0 = time.perf_counter()
            r = requests.post(f"{url}/v1/predict", json=PREDICT, timeout=10)
            assert time.perf_counter() - t0 < 1.0
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "1"
            assert r.headers["Content-Type"].startswith("application/json")
            assert r.json()["error"]["code"] == "overloaded"
        t0 = time.perf_counter()
        assert _checkin(url, auth).status_code == 200
        assert time.perf_counter() - t0 < 1.0
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert 'fedkb_requests_shed_total{endpoint="predict"} 20.0' in metrics
        held.close()  # slots free: the request goes on to the model (the fake one: no vocab)
        r = requests.post(f"{url}/v1/predict", json=PREDICT, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        assert "Retry-After" not in r.headers
    assert gate.shed == 20 and gate.inflight == 0


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the file descriptor limit ({hard}) cannot hold {needed} sockets")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.mark.e2e
def test_1010_idle_connections_do_not_lock_out_checkins_or_predictions(tmp_path):
    n = 1010
    _raise_fd_limit(2 * n + 256)  # both ends live in this process
    app = create_app(make_config(tmp_path, threads=8))
    live = LiveServer(app, threads=8, connection_limit=1000)
    with live as url:
        auth = _phone(url)
        port = live.server.effective_port
        idle: list[socket.socket] = []
        try:
            for i in range(n):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                if i % 2:  # half of them start a request and stall (slowloris)
                    s.sendall(b"POST /v1/checkin HTTP/1.1\r\nHost: x\r\n")
                idle.append(s)
            time.sleep(0.5)  # the server has taken all it will take of them
            t0 = time.perf_counter()
            assert _checkin(url, auth, timeout=5).status_code == 200
            checkin_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            r = requests.post(f"{url}/v1/predict", json=PREDICT, timeout=5)
            predict_s = time.perf_counter() - t0
            assert r.json()["error"]["code"] == "model_unavailable"  # answered (fake model)
            assert checkin_s < 3.0 and predict_s < 3.0, (checkin_s, predict_s)
            assert requests.get(f"{url}/v1/status", timeout=5).ok
            assert live.server.evicted >= n + 3 - 1000  # room was made, idle ones first
        finally:
            for s in idle:
                s.close()


def test_the_edge_limits_are_config_fields_the_cli_overrides(tmp_path):
    from fedkb.server.config import ConfigError, ServerConfig, load_config

    path = tmp_path / "c.json"
    path.write_text('{"idle_timeout_s": 7, "connection_limit": 50, '
                    '"predict": {"max_inflight": 2, "max_queue_s": 0.1}}')
    cfg = load_config(path)
    assert (cfg.idle_timeout_s, cfg.max_request_s, cfg.connection_limit) == (7, 300.0, 50)
    assert (cfg.predict.max_inflight, cfg.predict.max_queue_s) == (2, 0.1)
    over = load_config(path, idle_timeout_s=3, max_request_s=0.0)  # what the flags pass
    assert (over.idle_timeout_s, over.max_request_s) == (3, 0.0)
    for bad in ({"idle_timeout_s": 0}, {"max_request_s": -1.0}, {"connection_limit": 0},
                {"idle_timeout_s": 1.5}):
        with pytest.raises(ConfigError):
            ServerConfig(**bad)
    with pytest.raises(ConfigError):
        ServerConfig().predict.replace(max_inflight=0)
