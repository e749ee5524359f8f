"""Sweeps: `sweep: {workers: [1, 2, 4], seed: [0, 1, 2]}` in a config expands to a grid of runs.

Keys are dotted config paths (optimizer.lr, worker.slowdown, ...), values are lists. The grid is the
cartesian product in the order the keys are written, except that `seed` always varies fastest, so the
repeats of one setting run back to back and group naturally. Every point is built and validated (data
files included) before the first one runs: a typo in the last value must not surface hours in.
Running the points and writing the tables lives in sweep_run.py and sweep_tables.py.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from typing import Any

from protocol.config.loader import set_path
from protocol.config.schema import ExperimentConfig
from protocol.config.typed import build, to_dict
from protocol.errors import ConfigError
from worker.tasks.data import check_data

SEED_KEY = "seed"
FOLDER_CHARS = 100  # point folder names stay well under file-system limits

Combo = tuple[tuple[str, Any], ...]  # ((key, value), ...) in sweep order


def show(value: Any) -> str:
    """A value as written in a config (true, [1, 4], 0.001)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_slug(v) for v in value) or "none"
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", show(value)).strip("-") or "none"


def combo_label(combo: Combo) -> str:
    return " ".join(f"{k}={show(v)}" for k, v in combo)


def combo_folder(index: int, combo: Combo) -> str:
    """A folder name that sorts in run order and says what the values are: 003-workers=2_seed=0."""
    name = "_".join(f"{k}={_slug(v)}" for k, v in combo) or "all"
    return f"{index:03d}-{name}"[:FOLDER_CHARS]


@dataclass(frozen=True, eq=False)
class SweepPoint:
    index: int  # 1-based, in run order
    combo: Combo  # the swept values of this point
    cfg: ExperimentConfig  # the resolved config of this point (its own `sweep` is empty)

    @property
    def label(self) -> str:
        return combo_label(self.combo)

    @property
    def folder(self) -> str:
        return combo_folder(self.index, self.combo)

    @property
    def group(self) -> Combo:
        """The non-seed values: points that differ only in the seed are repeats of one setting."""
        return tuple((k, v) for k, v in self.combo if k != SEED_KEY)


def sweep_keys(sweep: dict[str, list]) -> list[str]:
    """Keys in the order written, seed moved last (so it varies fastest)."""
    return [k for k in sweep if k != SEED_KEY] + ([SEED_KEY] if SEED_KEY in sweep else [])


def grid(sweep: dict[str, list]) -> list[Combo]:
    keys = sweep_keys(sweep)
    return [tuple(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def expand_sweep(cfg: ExperimentConfig) -> list[SweepPoint]:
    """Every point of cfg's sweep, each validated; raises ConfigError naming the sweep key and value."""
    base = to_dict(cfg)
    base["sweep"] = {}
    points = []
    for index, combo in enumerate(grid(cfg.sweep), 1):
        try:
            points.append(SweepPoint(index, combo, _point_config(base, combo)))
        except ConfigError as err:
            raise _blame(base, err, combo) from None
    return points


def _point_config(base: dict, combo: Combo) -> ExperimentConfig:
    data = copy.deepcopy(base)
    for key, value in combo:
        set_path(data, key, copy.deepcopy(value))
    point = build(ExperimentConfig, data)
    check_data(point)
    return point


def _blame(base: dict, err: ConfigError, combo: Combo) -> ConfigError:
    """Name the swept key and value that broke the config (the error's own key, or the one value that
    fails even alone on the base config); name the whole point when only the combination fails."""
    where = f" (point {combo_label(combo)})" if len(combo) > 1 else ""
    for key, value in combo:
        if err.key == key or err.key.startswith((f"{key}.", f"{key}[")):
            detail = err.message if err.key == key else str(err)
            return ConfigError(f"sweep.{key}", f"value {show(value)}{where}: {detail}")
    for key, value in combo:
        try:
            _point_config(base, ((key, value),))
        except ConfigError:
            return ConfigError(f"sweep.{key}", f"value {show(value)}{where}: {err}")
    return ConfigError("sweep", f"point {combo_label(combo)}: {err}")
