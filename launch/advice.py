"""Settings that are valid and run, but are known to train badly: the launcher prints a note naming the keys,
what was measured and where the docs explain it, and starts the run anyway (the settings may be the point).
"""

from __future__ import annotations

from protocol.config.schema import ExperimentConfig

ADAPTIVE = ("amsgrad", "adam")  # servers whose step divides by a second moment of the direction


def advice(cfg: ExperimentConfig) -> list[str]:
    """One line per known-bad combination in cfg (none for most configs)."""
    notes = []
    if cfg.compression.method == "ef21" and cfg.optimizer.name in ADAPTIVE:
        notes.append(
            f"compression.method ef21 with optimizer.name {cfg.optimizer.name}: no theory covers it, and on the "
            "digits it ended 14 points of test accuracy below an sgd server (0.83 against 0.96, "
            "configs/digits_ef21.yaml); ef21-sgdm, or optimizer.name sgd, as the papers use "
            "(docs/algorithms.md, Error feedback under an adaptive server)"
        )
    return notes


def say_advice(cfg: ExperimentConfig) -> None:
    """Print advice(cfg), a note per line (python -m launch, launch.prepare, the head of launch.node)."""
    for note in advice(cfg):
        print(f"note: {note}")
