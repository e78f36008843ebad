"""The Flask federated server: check-in, rounds, aggregation, persistence, predictions.

One concept per module:

- :mod:`~fedkb.server.app` ``create_app(config)``, the shared :class:`ServerState`;
  :mod:`~fedkb.server.cli` ``fedkb server`` on waitress.
- :mod:`~fedkb.server.config` frozen ServerConfig / RoundConfig / ClientConfig /
  StrategyConfig.
- :mod:`~fedkb.server.round_machine` the round state machine (Bonawitz et al. 2019), its
  diagram and ``advance``; :mod:`~fedkb.server.round_status` its read-only views;
  :mod:`~fedkb.server.phases` a round's phases as data;
  :mod:`~fedkb.server.rounds` a round in memory; :mod:`~fedkb.server.tasks` tasks and
  their seeds; :mod:`~fedkb.server.selection` check-ins and seats;
  :mod:`~fedkb.server.reports` uploads and aborts; :mod:`~fedkb.server.global_model`
  the served versions; :mod:`~fedkb.server.pacing` eligibility and pace steering.
- :mod:`~fedkb.server.strategy` FedAvg / FedAvgM / FedAdam behind one interface;
  :mod:`~fedkb.server.aggregate` streaming weighted mean, clipping, validation.
- :mod:`~fedkb.server.checkpoints` (safetensors), :mod:`~fedkb.server.db`,
  :mod:`~fedkb.server.devices` state on disk; :mod:`~fedkb.server.auth` tokens.
- :mod:`~fedkb.server.errors` named errors -> JSON; :mod:`~fedkb.server.http` parsing;
  ``api_devices``, ``api_models``, ``api_status``, ``api_admin`` the blueprints;
  :mod:`~fedkb.server.metrics` Prometheus.
- :mod:`~fedkb.server.suggest` text -> model prefix, ranking; :mod:`~fedkb.server.predictor`
  LiteRT interpreter pools and version switching; ``api_predict`` ``POST /v1/predict``;
  :mod:`~fedkb.server.pages` the keyboard demo and the dashboard (``templates/``,
  ``static/``); :mod:`~fedkb.server.predict_cli` ``fedkb predict``.

The server never imports TensorFlow; it reads the artifact's metadata.json and weights.
"""
