"""Async (APAM) against sync (all-reduce AMSGrad), issue 5; run it with python -m experiments.async_vs_sync."""
