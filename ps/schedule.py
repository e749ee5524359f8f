"""Learning-rate schedules over the run's updates. Pure functions, no I/O.

    constant  1
    cosine    (1 + cos(pi * min(1, t / T))) / 2      (Loshchilov & Hutter 2017, SGDR, Eq. 5 with one cycle,
                                                      eta_min = 0 and no restart)

t is the server's version (updates applied before this one) and T is run.max_updates, so a run that ends on
max_updates ends with lr close to 0; a run that ends on max_seconds first stops earlier on the curve. The
factor multiplies lr0 before any staleness rule (ps/policy.py), on the server and in the sync baseline.
"""

from __future__ import annotations

import math


def lr_factor(kind: str, version: int, horizon: int) -> float:
    """The schedule's factor in [0, 1] at `version` (updates done) of `horizon` (run.max_updates).

    Raises ValueError for an unknown kind (the config schema admits only the kinds above).
    """
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        done = min(1.0, max(0, version) / max(1, horizon))
        return 0.5 * (1.0 + math.cos(math.pi * done))
    raise ValueError(f"unknown lr schedule {kind!r}")
