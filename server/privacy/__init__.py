"""Differential privacy for the round server: the building blocks, NumPy and
``dp_accounting`` only (no TensorFlow).

- :mod:`~fedkb.server.privacy.accounting` (ε, δ) from recorded per-round DP events
  (fixed cohorts: RDP replace-one; Poisson: PLD; DP-FTRL trees: zCDP), the noise for a
  target ε, ``default_delta``.
- :mod:`~fedkb.server.privacy.tree_sensitivity` the worst-case sensitivity of a DP-FTRL
  tree under a minimum separation (Kairouz et al. 2021, App. D).
- :mod:`~fedkb.server.privacy.adaptive_clip` quantile-adaptive clipping (Andrew et al.
  2021) with TF Privacy's ``QuantileAdaptiveClipSumQuery`` semantics.
- :mod:`~fedkb.server.privacy.noise` Gaussian noise from a cryptographically seeded
  generator.
- :mod:`~fedkb.server.privacy.tree` the binary-tree prefix-sum noise of DP-FTRL.
- :mod:`~fedkb.server.privacy.plan_cli` ``fedkb privacy plan``.
- :mod:`~fedkb.server.privacy.dp_mean` the DP aggregation stages: the clipped
  unweighted sum and DP-FedAvg's noised mean over the report goal.
- :mod:`~fedkb.server.privacy.dp_rounds` what the round machine asks with ``[privacy]``
  on: the plan's clip, each round's stage and recorded event, the budget, status.
- :mod:`~fedkb.server.privacy.ledger` ε recomputed fast at every commit.
"""
