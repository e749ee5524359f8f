"""EF21-SGD against EF21-SGDM noise floors (R3 in docs/algorithms.md); run it with python -m experiments.noise_floor."""
