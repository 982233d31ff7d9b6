"""Confide's Flower ServerApp side: thin adapter, strategy, round recording."""
