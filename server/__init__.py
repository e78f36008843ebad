"""The Flask federated server: check-in, rounds, aggregation, persistence, predictions."""
