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

Not wired into the rounds yet.
"""
