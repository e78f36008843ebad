"""Who trains in each round: sampled for TFF, logged by the fleet, replayed from a report."""

from __future__ import annotations

import json

import pytest

from fedkb.datasets.store import Dataset
from fedkb.errors import UserError
from fedkb.simulation.fleet_engine import round_rows
from fedkb.simulation.schedule import federated_rounds, replay_schedule


def _round(rid: int, version: int, reported: int, state: str = "committed",
           kind: str = "train") -> dict:
    return {"id": rid, "kind": kind, "state": state, "committed_version": version,
            "reported": reported, "selected": reported, "late": 0, "aborted": {},
            "metrics": {"loss": 1.0}, "durations": {}}


def test_sampling_is_seeded_distinct_per_round_and_varies_between_rounds():
    users = [f"u{i}" for i in range(50)]
    a = federated_rounds(users, 3, 10, seed=7)
    assert a == federated_rounds(users, 3, 10, seed=7)
    assert a != federated_rounds(users, 3, 10, seed=8)
    for clients in a:
        assert len({u for u, _ in clients}) == 10
    assert a[0] != a[1]


def test_round_rows_name_the_participants_of_committed_training_rounds_only():
    rounds = [_round(1, 1, 2), _round(2, 0, 0, state="abandoned"), _round(3, 2, 1),
              _round(4, 2, 1, kind="evaluate")]
    accepted = [[1, "bob", 0], [2, "zoe", 0], [1, "alice", 0], [3, "carol", 5]]
    rows = round_rows(rounds, accepted)
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["participants"] == [["alice", 0], ["bob", 0]]  # sorted; zoe's round died
    assert rows[1]["participants"] == [["carol", 5]]
    assert "participants" not in round_rows(rounds)[0]  # no log: no claim


def test_a_rounds_wall_leaves_out_its_selection_which_overlaps_the_last_round():
    """Pipelined, a round selects while the previous one trains: summing its selection
    into its wall counted that time twice over a run."""
    r = _round(1, 1, 2)
    r["durations"] = {"selection_s": 3.0, "reporting_s": 2.0, "commit_s": 0.5,
                      "advertise_keys_s": 0.25}
    row = round_rows([r])[0]
    assert row["wall_s"] == 2.75 and row["selection_s"] == 3.0


def _report(tmp_path, rows, **config):
    path = tmp_path / f"run{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps({"engine": "fleet", "rounds": rows, "config": {
        "strategy": "fedavg", "clip_norm": None, "lr_decay": False, "lr": 0.5,
        "server_lr": 1.0, "epochs": 1, **config}}))
    return path


def _knobs(lr=0.5, server_lr=1.0, epochs=1, strategy="fedavg", clip_norm=None,
           lr_decay=False):
    return {"lr": lr, "server_lr": server_lr, "epochs": epochs, "strategy": strategy,
            "clip_norm": clip_norm, "lr_decay": lr_decay, "weighting": "examples"}


def test_replay_reads_the_clients_back_and_refuses_what_would_not_be_the_same_run(
        tmp_path, tiny_data):
    ds = Dataset.open(tiny_data)
    u = ds.train_users
    rows = [{"round": 1, "clients": 2, "participants": [[u[0], 0], [u[1], 0]]},
            {"round": 2, "clients": 1, "participants": [[u[2], 3]]}]
    assert replay_schedule(_report(tmp_path, rows), ds, _knobs()) == \
        ([[[u[0], 0], [u[1], 0]], [[u[2], 3]]], 2)
    # any server recipe replays, with the same knobs; the decay spans the planned rounds
    recipe = {"strategy": "fedavgm", "clip_norm": 4.0, "lr_decay": True, "rounds": 20}
    assert replay_schedule(_report(tmp_path, rows, **recipe), ds, _knobs(
        strategy="fedavgm", clip_norm=4.0, lr_decay=True))[1] == 20
    # a report from before a knob existed ran with its default
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"rounds": rows, "config": {"client_lr": 0.5}}))
    assert replay_schedule(old, ds, _knobs())[0][1] == [[u[2], 3]]

    cases = [
        (_report(tmp_path, rows), _knobs(lr=0.3), "lr 0.5"),
        (_report(tmp_path, rows), _knobs(server_lr=0.7), "server_lr 1.0"),
        (_report(tmp_path, rows, strategy="fedavgm"), _knobs(), "strategy fedavgm"),
        (_report(tmp_path, rows), _knobs(strategy="fedadam"), "--strategy"),
        (_report(tmp_path, rows, clip_norm=4.0), _knobs(), "clip_norm 4.0"),
        (_report(tmp_path, rows), _knobs(clip_norm=4.0), "clip_norm None"),
        (_report(tmp_path, rows, lr_decay=True), _knobs(), "--lr-decay"),
        (old, _knobs(strategy="fedavgm"), "strategy fedavg,"),
        # TFF is example-weighted FedAvg: a uniform-weighted fleet run is another run
        (_report(tmp_path, rows, weighting="uniform"), _knobs(), "weighting uniform"),
        (_report(tmp_path, [{**rows[0], "clients": 3}]), _knobs(), "incomplete"),
        (_report(tmp_path, [{"round": 1, "clients": 2}]), _knobs(), "incomplete"),
        (_report(tmp_path, [{**rows[1], "participants": [["nobody", 0]]}]), _knobs(),
         "'nobody'"),
        (_report(tmp_path, []), _knobs(), "no rounds"),
    ]
    for path, knobs, why in cases:
        with pytest.raises(UserError, match=why):
            replay_schedule(path, ds, knobs)
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(UserError, match="not a federated report"):
        replay_schedule(tmp_path / "junk.json", ds, _knobs())
