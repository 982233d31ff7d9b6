"""Confide's ML core: config, models, data, training, metrics. Never imports flwr."""
