"""Experiments on top of Confide: configs, the in-process simulation runner, scoring."""
