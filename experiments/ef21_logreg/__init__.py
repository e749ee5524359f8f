"""EF21 family on small-batch logistic regression (R4 (ii) in docs/algorithms.md); run it with
python -m experiments.ef21_logreg."""
