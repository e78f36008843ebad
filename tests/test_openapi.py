"""The OpenAPI document (issue 19): it matches the app's routes, its schemas hold what the
server answers, and an outside fuzzer (Schemathesis) finds no 5xx, no answer outside the
documented statuses and schemas, and no hang against a live server on 127.0.0.1.

The fuzz run is bounded: a few examples per operation and mode (valid and invalid data),
a few stateful sequences along the document's links, 10 s per request.
"""

from __future__ import annotations

import re
import time
from typing import Any

import hypothesis
import jsonschema
import pytest
import requests
import schemathesis
from live_server import LiveServer
from schemathesis import DataGenerationMethod
from server_support import ADMIN, ELIGIBLE, deltas, harness, make_config

from fedkb.server.app import create_app
from fedkb.server.openapi import document
from fedkb.wire import UPLOAD_CONTENT_TYPE

MAX_EXAMPLES = 8  # per operation and mode
STATEFUL_EXAMPLES, STATEFUL_STEPS = 6, 6
REQUEST_TIMEOUT_S = 10


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_route_is_documented_and_every_documented_path_routed(tmp_path):
    app = create_app(make_config(tmp_path))
    routed = {(openapi_path(r.rule), m.lower()) for r in app.url_map.iter_rules()
              for m in r.methods - {"HEAD", "OPTIONS"}}
    doc = document()
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routed - documented == set(), "routes missing from the document"
    assert documented - routed == set(), "documented paths the app does not route"
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200 and served.get_json() == doc
    assert doc["openapi"] == "3.1.0"
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def _validator(name: str) -> jsonschema.Draft202012Validator:
    doc = document()
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **doc})


def test_the_schemas_are_json_schema_and_hold_real_answers(tmp_path):
    for name, schema in document()["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    h = harness(tmp_path, pipeline=False)
    reg = h.client.post("/v1/devices", json={"population": "train"}).get_json()
    _validator("RegisterResponse").validate(reg)
    devs = [h.register() for _ in range(3)]
    answers = [d.checkin() for d in devs]
    for a in answers:
        _validator("CheckinResponse").validate(a)
    late = h.register().checkin()
    assert "retry_after_s" in late
    _validator("CheckinResponse").validate(late)
    up = devs[0].upload(answers[0]["task"], deltas(1.0)).get_json()
    _validator("UploadResult").validate(up)
    _validator("AbortResult").validate(devs[2].abort(answers[2]["task"]["task_id"]).get_json())
    devs[1].upload(answers[1]["task"], deltas(1.0))  # commits round 1
    _validator("Status").validate(h.status())
    _validator("Round").validate(h.client.get("/v1/rounds/1").get_json())
    _validator("RoundList").validate(h.client.get("/v1/rounds").get_json())
    _validator("ModelVersions").validate(h.client.get("/v1/models").get_json())
    _validator("Manifest").validate(h.client.get("/v1/models/1").get_json())
    _validator("RoundConfig").validate(h.admin("GET", "/v1/admin/round-config").get_json())
    _validator("ClientConfig").validate(h.admin("GET", "/v1/admin/client-config").get_json())
    err = h.client.get("/v1/rounds/99").get_json()
    _validator("ErrorBody").validate(err)
    with pytest.raises(jsonschema.ValidationError):  # the schemas do refuse
        _validator("CheckinResponse").validate({"retry_after_s": 1.0})


class Auth:
    """The bearer token each operation's ``security`` asks for."""

    def __init__(self, url: str) -> None:
        reg = requests.post(f"{url}/v1/devices", json={"population": "train"}, timeout=10)
        reg.raise_for_status()
        self.tokens = {"deviceToken": reg.json()["token"], "adminToken": ADMIN}

    def headers(self, case: Any) -> dict[str, str]:
        for requirement in case.operation.definition.raw.get("security", []):
            for scheme in requirement:
                return {"Authorization": f"Bearer {self.tokens[scheme]}"}
        return {}


SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    suppress_health_check=list(hypothesis.HealthCheck))


def _sent_query_is_valid(op: Any, case: Any, url: str) -> bool:
    """Whether what was *sent* for a GET is a valid query after all: schemathesis 3.x makes
    "negative" query values such as ``[]``, ``[51]`` or ``[None]`` for an integer, which
    serialize to no parameter or to ``limit=51`` (seen in a CI-like run: the server's 200
    was reported as accepting negative data). Only a query of known parameters, each at
    most once, integers written as integers, counts as valid here."""
    import urllib.parse

    raw = op.definition.raw
    if op.method.upper() != "GET" or raw.get("requestBody"):
        return False
    kw = case.as_requests_kwargs(base_url=url)
    prepared = requests.Request(method="GET", url=kw["url"], params=kw.get("params")).prepare()
    sent: dict[str, list[str]] = {}
    for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(prepared.url).query,
                                       keep_blank_values=True):
        sent.setdefault(k, []).append(v)
    params = {p["name"]: p.get("schema", {}) for p in raw.get("parameters", [])
              if p.get("in") == "query"}
    if set(sent) - set(params) or any(len(v) > 1 for v in sent.values()):
        return False
    return all(params[k].get("type") != "integer" or (
        re.fullmatch(r"-?[0-9]{1,19}", v[0]) is not None and -2**63 <= int(v[0]) < 2**63)
        for k, v in sent.items())


def _fuzz_operation(op: Any, method: DataGenerationMethod, url: str, auth: Auth,
                    failures: list[str]) -> int:
    calls = [0]

    @hypothesis.given(case=op.as_strategy(data_generation_method=method))
    @SETTINGS
    def run(case: Any) -> None:
        calls[0] += 1
        try:
            case.call_and_validate(base_url=url, headers=auth.headers(case),
                                   timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # collected: one report of everything found
            if "Accepted negative data" in str(exc) and _sent_query_is_valid(op, case, url):
                return  # the "negative" case serialized to a valid request (see below)
            failures.append(f"{method.name} {op.verbose_name}: {str(exc)[:600]}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # nothing of it can be made invalid
        assert method is DataGenerationMethod.negative, op.verbose_name
    return calls[0]


@pytest.mark.e2e
def test_schemathesis_finds_no_server_error_no_schema_violation_no_hang(tmp_path,
                                                                        tiny_artifact):
    schemathesis.experimental.OPEN_API_3_1.enable()
    # an upload body is bytes (FKBU framing), sent as they were generated
    schemathesis.serializers.register(UPLOAD_CONTENT_TYPE)(
        schemathesis.serializers.OctetStreamSerializer)
    cfg = make_config(tmp_path, model=False, pipeline=False, threads=8).replace(
        model=tiny_artifact, registrations_per_minute_per_address=None,
        registrations_per_minute=None)  # a real model: predictions are answered
    app = create_app(cfg)
    failures: list[str] = []
    timings: list[tuple[float, int, str, str]] = []
    t0 = time.monotonic()
    with LiveServer(app, threads=8) as url:
        auth = Auth(url)
        for _ in range(3):  # phones in the first round, so check-ins hand out tasks
            requests.post(f"{url}/v1/checkin", json={"conditions": ELIGIBLE}, timeout=10,
                          headers={"Authorization": f"Bearer {Auth(url).tokens['deviceToken']}"})
        schema = schemathesis.from_dict(document(), base_url=url)
        calls = 0
        for result in schema.get_all_operations():
            op = result.ok()
            raw = op.definition.raw
            for method in (DataGenerationMethod.positive, DataGenerationMethod.negative):
                if method is DataGenerationMethod.negative and not (
                        raw.get("parameters") or raw.get("requestBody")):
                    continue  # nothing to make invalid
                t1 = time.monotonic()
                n = _fuzz_operation(op, method, url, auth, failures)
                timings.append((round(time.monotonic() - t1, 2), n, method.name,
                                op.verbose_name))
                calls += n

        class Stateful(schema.as_state_machine()):  # type: ignore[misc]
            def get_call_kwargs(self, case: Any) -> dict[str, Any]:
                return {"headers": auth.headers(case), "timeout": REQUEST_TIMEOUT_S}

        Stateful.run(settings=hypothesis.settings(
            SETTINGS, max_examples=STATEFUL_EXAMPLES, stateful_step_count=STATEFUL_STEPS))
        assert requests.get(f"{url}/v1/status", timeout=10).status_code == 200
    elapsed = time.monotonic() - t0
    print("slowest operations:", sorted(timings, reverse=True)[:5], f"total {elapsed:.1f} s")
    assert not failures, f"{len(failures)} of {calls} cases failed:\n" + "\n".join(failures)
    assert calls >= 100 and elapsed < 240, (calls, elapsed)
