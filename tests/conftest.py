"""Shared fixtures and the session guard against leaked processes.

At the start of the session the guard puts a unique marker in this process's
environment; every process the tests start inherits it, including ones that outlive
their parent and get re-parented (TFF's ``worker_binary``). At the end, any process
still alive that carries the marker is leaked: the guard kills it (so CI never hangs on
it) and fails the run. Processes that belong to others on the same machine (another
session's server, a developer's fleet) are never touched.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

import psutil
import pytest

MARKER = "FEDKB_TEST_SESSION"


def _suspects() -> dict[int, str]:
    """Live processes started by this test session (they carry its marker)."""
    token = os.environ.get(MARKER)
    found: dict[int, str] = {}
    if not token:
        return found
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] == os.getpid():
            continue
        try:
            if p.environ().get(MARKER) == token and p.status() != psutil.STATUS_ZOMBIE:
                found[p.info["pid"]] = " ".join(p.info.get("cmdline") or []) or p.name()
        except psutil.Error:
            continue
    return found


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist every end-to-end test joins one group, so they run one at a time
    on one worker: each starts a server and phones whose rounds have wall-clock deadlines
    and expects both cores to be mostly its own; the unit tests fill the other worker.
    (Each xdist worker is a session of its own, with its own leak marker below.)"""
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.xdist_group("e2e"))


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    """Fail the session if a test left a server, fleet worker, browser or TFF worker."""
    os.environ[MARKER] = uuid.uuid4().hex
    yield
    deadline = time.monotonic() + 10.0
    leaked: dict[int, str] = {}
    while time.monotonic() < deadline:
        leaked = _suspects()
        if not leaked:
            return
        time.sleep(0.25)
    for pid in leaked:  # clean up so the CI runner does not hang, then fail loudly
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    pytest.fail(f"tests left processes running: {leaked}", pytrace=False)


# --- data fixtures ---------------------------------------------------------------------

TINY_SPEECHES = {
    "alice": "The cat sat on the mat. The dog sat on the log! Where is the cat? "
    "'Tis the cat that sat. I don't know where the dog is.",
    "bob": "The dog ran to the park. The cat ran to the house. Is the dog in the park? "
    "Yes, the dog is in the park.",
    "carol": "I love the cat. I love the dog. The cat and the dog love me. "
    "Do you love the cat?",
    "dave": "The park is green. The house is red. The mat is on the floor of the house.",
    "erin": "Where is the park? The park is near the house. The dog knows the way.",
    "frank": "The log is by the park. The cat sat on the log. The dog sat on the mat.",
    "grace": "Good night, sweet cat. Good night, sweet dog. The house is quiet now.",
    "heidi": "The cat is on the mat and the dog is on the log. Where is the house?",
    "ivan": "I think the dog is in the house. I think the cat is in the park.",
    "judy": "The mat, the log, the park and the house: the cat knows them all.",
}


@pytest.fixture(scope="session")
def tiny_jsonl(tmp_path_factory) -> Path:
    """A small JSONL corpus: ten users, a few sentences each."""
    import json

    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for user, text in TINY_SPEECHES.items():
            for sentence in text.split(". "):
                fh.write(json.dumps({"user": user, "text": sentence}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_data(tiny_jsonl, tmp_path_factory) -> Path:
    """A prepared dataset directory from :func:`tiny_jsonl` (T=10, 20% held out)."""
    from fedkb.datasets.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare(PrepareConfig(corpus=str(tiny_jsonl), out=out, vocab_size=40, seq_len=10,
                          heldout_fraction=0.2, seed=0))
    return out


# --- model artifact fixtures (issue 3: model/, device_runtime/trainer.py) --------------


@pytest.fixture(scope="session")
def tiny_artifact(tiny_data, tmp_path_factory) -> Path:
    """The ``tiny`` preset exported from :func:`tiny_data` once per session (via the CLI)."""
    from fedkb.cli import main

    out = tmp_path_factory.mktemp("artifact") / "tiny"
    assert main(["model", "export", "--preset", "tiny", "--data", str(tiny_data),
                 "--out", str(out), "--json"]) == 0
    return out


# --- end of model artifact fixtures ----------------------------------------------------
