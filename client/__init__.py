"""Confide's Flower ClientApp: a thin adapter over common/."""
