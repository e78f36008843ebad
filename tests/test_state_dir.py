"""The state directory keeps its secrets: modes, the signing key out of the DB, no stale temps."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from server_support import harness, make_config

from fedkb.server.app import create_app
from fedkb.server.auth import SECRET_ENV
from fedkb.server.config import ServerConfig


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def key_rows(state: Path) -> list[tuple]:
    with sqlite3.connect(state / "fedkb.db") as conn:
        return conn.execute("SELECT key FROM kv WHERE key = 'secret_key'").fetchall()


@pytest.fixture(autouse=True)
def _open_umask(monkeypatch):
    """Run with the most permissive usual umask: modes must not depend on the caller's."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    old = os.umask(0o022)
    yield
    os.umask(old)


def fresh_config(tmp_path: Path, **kw) -> ServerConfig:
    cfg = make_config(tmp_path, **kw)
    return ServerConfig(**{**cfg.__dict__, "admin_token": None})


def test_secrets_database_and_directory_are_private(tmp_path):
    h = harness(tmp_path)
    state = tmp_path / "state"
    h.register()  # a write: the WAL and SHM files exist now
    assert mode(state) == 0o700
    for name in ("fedkb.db", "fedkb.db-wal", "fedkb.db-shm"):
        assert (state / name).exists(), name
        assert mode(state / name) == 0o600, name
    assert key_rows(state) == []  # the signing key is not in the database


def test_generated_secret_key_and_admin_token_are_0600_files(tmp_path):
    cfg = fresh_config(tmp_path)
    app = create_app(cfg)
    state = cfg.state_dir
    assert mode(state / "secret_key") == 0o600 and mode(state / "admin_token") == 0o600
    assert key_rows(state) == []
    key = (state / "secret_key").read_text().strip()
    assert len(key) >= 32
    token = app.test_client().post("/v1/devices", json={"population": "train"}).get_json()
    app.extensions["fedkb"].close()
    again = create_app(cfg)  # same key after a restart: the token still verifies
    assert again.extensions["fedkb"].tokens.verify(token["token"]) == token["device_id"]


def test_an_existing_key_moves_out_of_the_database(tmp_path):
    cfg = fresh_config(tmp_path)
    state = cfg.state_dir
    state.mkdir(parents=True)
    os.chmod(state, 0o755)  # as an older version left it
    with sqlite3.connect(state / "fedkb.db") as conn:
        conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO kv VALUES ('secret_key', ?)", (json.dumps("old-key" * 6),))
    os.chmod(state / "fedkb.db", 0o644)
    (state / "admin_token").write_text("old-admin\n")
    os.chmod(state / "admin_token", 0o644)
    app = create_app(cfg)
    assert (state / "secret_key").read_text().strip() == "old-key" * 6  # tokens stay valid
    assert key_rows(state) == []
    for name in ("fedkb.db", "fedkb.db-wal"):  # the row's bytes are gone, not just unlinked
        if (state / name).exists():
            assert b"old-key" not in (state / name).read_bytes(), name
    assert app.extensions["fedkb"].admin_token == "old-admin"
    for p in (state, state / "fedkb.db", state / "admin_token", state / "secret_key"):
        assert mode(p) & 0o077 == 0, p


def test_secret_key_from_the_environment_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "env-key-" * 5)
    cfg = fresh_config(tmp_path)
    app = create_app(cfg)
    assert not (cfg.state_dir / "secret_key").exists() and key_rows(cfg.state_dir) == []
    tokens = app.extensions["fedkb"].tokens
    assert tokens.verify(tokens.issue("d1")) == "d1"
    monkeypatch.delenv(SECRET_ENV)
    other = create_app(fresh_config(tmp_path / "other")).extensions["fedkb"].tokens
    with pytest.raises(Exception, match="not valid"):
        other.verify(tokens.issue("d1"))


def test_stale_checkpoint_temporaries_are_removed_on_start(tmp_path):
    h = harness(tmp_path)
    ckpts = tmp_path / "state" / "checkpoints"
    stale = [ckpts / ".v000001.safetensors.tmp-4242", ckpts / ".latest.safetensors.tmp-4242",
             ckpts / "v000002.safetensors.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = sorted(p.name for p in ckpts.iterdir() if p not in stale)
    h.state.close()
    harness(tmp_path)
    assert sorted(p.name for p in ckpts.iterdir()) == keep
