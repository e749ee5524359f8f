"""Reproductions of the papers' claims through the real runtime (results: docs/results/; index: README.md here).

Each study is a package, `python -m experiments.NAME [--quick]` (NAME/__main__.py): it runs its experiments
(the launcher's sweeps, or the in-process server with fake workers), collects the run folders under runs/,
and writes a markdown report with plots into its experiment folder there (--out docs/results replaces the
committed report). Every number in a report comes from the runs that script just made.
"""
