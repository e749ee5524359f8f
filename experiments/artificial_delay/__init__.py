"""APAM under artificial delay (R2 in docs/algorithms.md); run it with python -m experiments.artificial_delay."""
