"""Privacy accounting (fedkb.server.privacy.accounting) against dp_accounting called
directly and against TF Privacy's own analysis code; the planner and its CLI.

TF Privacy's analysis modules (``compute_dp_sgd_privacy_lib``,
``tree_aggregation_accountant``) import only dp_accounting, absl and scipy, so they are
loaded from the installed files without importing TensorFlow: these tests stay fast.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedkb.cli import main
from fedkb.server.privacy import accounting as acc
from fedkb.server.privacy.plan_cli import plan
from fedkb.server.privacy.tree_sensitivity import tree_depth, worst_case_sensitivity_squared

ROOT = Path(__file__).resolve().parents[1]
REL = dp_accounting.NeighboringRelation


def tf_privacy_module(relpath: str):
    """One of TF Privacy's analysis modules, loaded from its file (no TensorFlow)."""
    try:
        dist = importlib.metadata.distribution("tensorflow-privacy")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorflow-privacy is not installed")
    path = Path(dist.locate_file(f"tensorflow_privacy/privacy/analysis/{relpath}"))
    spec = importlib.util.spec_from_file_location(f"_tfp_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixed(z: float, n: int = 1000, m: int = 50) -> acc.RoundEvent:
    return acc.RoundEvent(acc.FIXED, z, 1.0, population=n, clients_per_round=m)


# --- epsilon equals dp_accounting called directly ------------------------------------

def test_fixed_cohorts_are_rdp_replace_one_with_half_the_noise_multiplier():
    z, n, m, t, delta = 1.1, 1000, 50, 60, 1e-5
    ours = acc.epsilon([fixed(z, n, m)] * t, delta)
    direct = (rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
              .compose(dp_accounting.SelfComposedDpEvent(
                  dp_accounting.SampledWithoutReplacementDpEvent(
                      n, m, dp_accounting.GaussianDpEvent(z / 2)), t))
              .get_epsilon(delta))
    assert ours.epsilon == pytest.approx(direct, rel=1e-12)
    assert (ours.accountant, ours.neighboring, ours.rounds) == ("rdp", "replace_one", t)
    # the z/2 matters: accounting the sum with sensitivity C instead of 2C would claim
    # a much smaller epsilon
    optimistic = (rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
                  .compose(dp_accounting.SelfComposedDpEvent(
                      dp_accounting.SampledWithoutReplacementDpEvent(
                          n, m, dp_accounting.GaussianDpEvent(z)), t))
                  .get_epsilon(delta))
    assert ours.epsilon > 1.5 * optimistic


def test_rounds_with_different_noise_compose():
    events = [fixed(1.0)] * 20 + [fixed(2.0, 1200, 60)] * 30
    direct = (rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
              .compose(dp_accounting.SelfComposedDpEvent(
                  dp_accounting.SampledWithoutReplacementDpEvent(
                      1000, 50, dp_accounting.GaussianDpEvent(0.5)), 20))
              .compose(dp_accounting.SelfComposedDpEvent(
                  dp_accounting.SampledWithoutReplacementDpEvent(
                      1200, 60, dp_accounting.GaussianDpEvent(1.0)), 30))
              .get_epsilon(1e-6))
    assert acc.epsilon(events, 1e-6).epsilon == pytest.approx(direct, rel=1e-12)


def test_poisson_is_pld_and_equals_tf_privacy_statement():
    z, q, t, delta = 1.2, 0.02, 150, 1e-5
    ours = acc.epsilon([acc.RoundEvent(acc.POISSON, z, 1.0, sampling_rate=q)] * t, delta)
    direct = (pld.PLDAccountant()
              .compose(dp_accounting.SelfComposedDpEvent(
                  dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), t))
              .get_epsilon(delta))
    assert ours.epsilon == pytest.approx(direct, rel=1e-9)
    assert (ours.accountant, ours.neighboring) == ("pld", "add_or_remove_one")
    lib = tf_privacy_module("compute_dp_sgd_privacy_lib.py")
    # n examples, batch q*n, epochs t*q: TF Privacy composes ceil(epochs / q) = t steps
    text = lib.compute_dp_sgd_privacy_statement(
        number_of_examples=10_000, batch_size=200, num_epochs=t * q, noise_multiplier=z,
        delta=delta, used_microbatching=False, accountant_type=lib.AccountantType.PLD)
    printed = float(re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)", text).group(1))
    assert round(ours.epsilon, 3) == printed


def test_no_noise_is_no_privacy_and_no_events_spend_nothing():
    assert math.isinf(acc.epsilon([fixed(0.0)] * 3, 1e-5).epsilon)
    assert acc.epsilon([], 1e-5).epsilon == 0.0
    assert acc.epsilon([fixed(0.0)], 1e-5).to_json()["epsilon"] is None


# --- DP-FTRL trees --------------------------------------------------------------------

@pytest.mark.parametrize("steps,sep,most", [(16, 0, None), (20, 3, None), (37, 4, 5),
                                            (64, 7, 3), (100, 9, None), (5, 10, None)])
def test_tree_sensitivity_equals_tf_privacy(steps, sep, most):
    taa = tf_privacy_module("tree_aggregation_accountant.py")
    theirs = taa._max_tree_sensitivity_square_sum(
        most if most is not None else steps, sep, steps)
    assert worst_case_sensitivity_squared(steps, sep, most) == theirs


def test_one_participation_per_tree_is_the_depth_and_matches_dp_accounting():
    for steps in (1, 2, 3, 7, 8, 100):
        assert worst_case_sensitivity_squared(steps, steps) == tree_depth(steps)
    z, r, trees = 3.0, 32, 4
    events = [acc.RoundEvent(acc.TREE, z, 1.0, tree=i // r, min_separation=r)
              for i in range(r * trees)]
    ours = acc.epsilon(events, 1e-6)
    single = (rdp.RdpAccountant(neighboring_relation=REL.REPLACE_SPECIAL)
              .compose(dp_accounting.SelfComposedDpEvent(
                  dp_accounting.SingleEpochTreeAggregationDpEvent(z, r), trees)))
    # dp_accounting's RDP of a tree is alpha * rho at every order
    assert single._rdp / single._orders == pytest.approx([ours.rho] * len(single._orders))
    assert ours.rho == trees * tree_depth(r) / (2 * z * z)


def test_tree_epsilon_equals_tf_privacy_zcdp_then_pld():
    taa = tf_privacy_module("tree_aggregation_accountant.py")
    z, steps, sep, delta = 4.0, 60, 5, 1e-8
    events = [acc.RoundEvent(acc.TREE, z, 1.0, tree=0, min_separation=sep)] * steps
    ours = acc.epsilon(events, delta)
    rho = taa.compute_zcdp_single_tree(z, steps, steps, sep)
    assert ours.rho == pytest.approx(rho, rel=1e-12)
    assert ours.epsilon == pytest.approx(taa._gaussian_zcdp_to_epsilon(rho, delta), rel=1e-6)


@pytest.mark.parametrize("mu", [0.05, 0.7, 2.0, 4.0])
def test_exact_gaussian_conversion_equals_pld(mu):
    direct = pld.PLDAccountant().compose(dp_accounting.GaussianDpEvent(1 / mu))
    assert acc.gaussian_epsilon(mu, 1e-7) == pytest.approx(direct.get_epsilon(1e-7), rel=1e-6)


def test_a_tree_that_changes_noise_midway_is_refused():
    events = [acc.RoundEvent(acc.TREE, 2.0, 1.0, tree=0, min_separation=1),
              acc.RoundEvent(acc.TREE, 3.0, 1.0, tree=0, min_separation=1)]
    with pytest.raises(acc.PrivacyConfigError, match="mid-tree"):
        acc.epsilon(events, 1e-5)


# --- records, delta, refusals ---------------------------------------------------------

def test_events_round_trip_through_json():
    events = [fixed(1.3), acc.RoundEvent(acc.FIXED, 1.3, 0.7, population=1000,
                                         clients_per_round=50, noise_cohort=400)]
    back = [acc.RoundEvent.from_json(json.loads(json.dumps(e.to_json()))) for e in events]
    assert back == events
    assert "sampling_rate" not in events[0].to_json()
    with pytest.raises(acc.PrivacyConfigError):
        acc.RoundEvent.from_json({"mechanism": "fixed", "noise": 1.0})


def test_default_delta():
    assert acc.default_delta(300) == 1e-5
    n = 10**7
    assert acc.default_delta(n) == pytest.approx(1 / (n * math.log(n)))
    assert all(acc.default_delta(n) < 1 / n for n in (2, 10, 1000, 10**9))
    with pytest.raises(acc.PrivacyConfigError):
        acc.default_delta(1)


@pytest.mark.parametrize("make", [
    lambda: fixed(-0.1),
    lambda: acc.RoundEvent(acc.FIXED, 1.0, 0.0, population=10, clients_per_round=5),
    lambda: acc.RoundEvent(acc.FIXED, 1.0, -1.0, population=10, clients_per_round=5),
    lambda: fixed(1.0, n=10, m=11),
    lambda: acc.RoundEvent(acc.POISSON, 1.0, 1.0, sampling_rate=1.5),
    lambda: acc.RoundEvent(acc.TREE, 1.0, 1.0, tree=0),
    lambda: acc.RoundEvent("laplace", 1.0, 1.0),
    lambda: acc.epsilon([fixed(1.0)], 0.0),
    lambda: acc.epsilon([fixed(1.0)], 1.0),
    lambda: acc.epsilon([fixed(1.0), acc.RoundEvent(acc.POISSON, 1.0, 1.0,
                                                    sampling_rate=0.1)], 1e-5),
], ids=["z<0", "C=0", "C<0", "m>N", "q>1", "tree-no-sep", "unknown", "delta=0", "delta=1",
        "mixed"])
def test_bad_settings_are_refused(make):
    with pytest.raises(acc.PrivacyConfigError):
        make()


def test_target_already_spent_is_refused():
    spent = [fixed(0.8)] * 50
    so_far = acc.epsilon(spent, 1e-5).epsilon
    with pytest.raises(acc.PrivacyConfigError, match="already spent"):
        acc.noise_for_target(so_far * 0.9, 1e-5, lambda z: [fixed(z)] * 10, spent=spent)


# --- the inverse: noise for a target epsilon ------------------------------------------

@pytest.mark.slow
def test_noise_for_target_round_trips_fixed():
    target, delta = 4.0, 1e-5
    z = acc.noise_for_target(target, delta, lambda z: [fixed(z)] * 40, tol=1e-4)
    eps = acc.epsilon([fixed(z)] * 40, delta).epsilon
    assert eps <= target and eps == pytest.approx(target, rel=1e-3)
    # and slightly less noise would overspend
    assert acc.epsilon([fixed(z - 1e-2)] * 40, delta).epsilon > target


def test_noise_for_target_round_trips_tree_with_spent_rounds():
    def tree(z, start, count):
        return [acc.RoundEvent(acc.TREE, z, 1.0, tree=r // 20, min_separation=4)
                for r in range(start, start + count)]
    spent = tree(12.0, 0, 20)  # tree 0 done at z = 12
    assert acc.epsilon(spent, 1e-6).epsilon < 3.0
    z = acc.noise_for_target(5.0, 1e-6, lambda z: tree(z, 20, 40), spent=spent)
    eps = acc.epsilon([*spent, *tree(z, 20, 40)], 1e-6).epsilon
    assert eps <= 5.0 and eps == pytest.approx(5.0, rel=1e-3)


# --- noise cohort: the hypothetical population ----------------------------------------

def test_noise_cohort_epsilon_is_labelled_and_is_not_the_runs():
    nominal, m, k = 1.0, 50, 500
    events = [acc.RoundEvent(acc.FIXED, nominal * m / k, 1.0, population=1000,
                             clients_per_round=m, noise_cohort=k)] * 30
    real = acc.epsilon(events, 1e-5)
    hypo = acc.hypothetical_epsilon(events, 1e-5)
    assert real.hypothetical_population is None
    assert hypo.hypothetical_population["label"] == acc.HYPOTHETICAL
    assert hypo.hypothetical_population["population"] == 10_000
    # the pretended deployment: K of N*K/m with the nominal multiplier
    assert hypo.epsilon == pytest.approx(
        acc.epsilon([fixed(nominal, 10_000, k)] * 30, 1e-5).epsilon, rel=1e-12)
    assert real.epsilon > 10 * hypo.epsilon


# --- the planner and its CLI ----------------------------------------------------------

def test_plan_json_fields(capsys):
    assert main(["privacy", "plan", "--population", "1000", "--clients-per-round", "50",
                 "--rounds", "30", "--noise", "1.2", "--noise-cohort", "400",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"epsilon", "delta", "noise_multiplier", "mechanism", "accountant",
            "hypothetical_population"} <= doc.keys()
    assert doc["noise_multiplier"] == pytest.approx(1.2 * 50 / 400)
    assert doc["epsilon"] == pytest.approx(
        acc.epsilon([fixed(1.2 * 50 / 400)] * 30, 1e-5).epsilon)
    assert doc["hypothetical_population"]["epsilon"] < doc["epsilon"]
    assert main(["privacy", "plan", "--population", "1000", "--clients-per-round", "50",
                 "--rounds", "30", "--noise", "1.2"]) == 0
    assert "epsilon =" in capsys.readouterr().out


def test_plan_ftrl_target_round_trips():
    doc = plan(2000, 100, 80, target_epsilon=8.0, delta=1e-7, mechanism="ftrl",
               min_separation=9, restart_every=40)
    assert doc["epsilon"] <= 8.0 and doc["epsilon"] == pytest.approx(8.0, rel=1e-3)
    assert doc["accountant"] == acc.TREE_ACCOUNTANT and doc["rho"] > 0


def test_plan_refusals_exit_2(capsys):
    assert main(["privacy", "plan", "--population", "10", "--clients-per-round", "20",
                 "--rounds", "5", "--noise", "1"]) == 2
    assert main(["privacy", "plan", "--population", "100", "--clients-per-round", "20",
                 "--rounds", "5", "--noise", "1", "--mechanism", "ftrl"]) == 2
    assert main(["privacy", "plan", "--population", "100", "--clients-per-round", "20",
                 "--rounds", "5", "--noise", "1", "--mechanism", "ftrl",
                 "--min-separation", "9"]) == 2  # 20 x 10 > 100 devices
    assert main(["privacy", "plan", "--population", "100", "--clients-per-round", "20",
                 "--rounds", "5", "--noise", "-1"]) == 2
    assert main(["privacy", "plan", "--population", "100", "--clients-per-round", "20",
                 "--rounds", "5", "--noise", "1", "--delta", "2"]) == 2
    assert capsys.readouterr().err.count("error:") == 5


def test_plan_runs_in_a_child_without_tensorflow():
    code = ("import sys, json; from fedkb.cli import main; "
            "rc = main(['privacy', 'plan', '--population', '500', '--clients-per-round', "
            "'25', '--rounds', '10', '--noise', '1.0', '--json']); "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorflow_privacy', 'keras')]; "
            "print(json.dumps({'rc': rc, 'bad': bad}), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report == {"rc": 0, "bad": []}
    assert json.loads(out.stdout)["mechanism"] == "fedavg"


def test_privacy_package_never_imports_tensorflow():
    for path in sorted((ROOT / "server" / "privacy").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names]
        names += [n.module for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module]
        bad = [m for m in names
               if m.split(".")[0] in ("tensorflow", "tensorflow_privacy", "keras")]
        assert not bad, f"{path.name} imports {bad}"
