"""At Stability's Edge on small problems (R5 in docs/algorithms.md); run it with
python -m experiments.stability_edge."""
