"""Experiment loading for the launcher: YAML file + `key.sub=value` overrides -> validated config.

Everything is checked before any process starts; errors name the key (ConfigError).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from protocol.config.schema import ExperimentConfig
from protocol.config.typed import build, to_dict
from protocol.errors import ConfigError


def read_yaml(path: str | Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError("<file>", f"{path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("<root>", f"{path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` sets data['a']['b']; the value is parsed as YAML (so 1e-3, [1, 2], true work)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(item, "overrides look like key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            raise ConfigError(key, f"cannot parse value {raw!r}") from None
        set_path(out, key, value)
    return out


def set_path(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    if parts[0] == "sweep" and len(parts) > 2:  # a sweep key is itself a dotted path: sweep.optimizer.lr=[...]
        parts = ["sweep", ".".join(parts[1:])]
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is not a section, cannot set a sub-key")
        node = child
    node[parts[-1]] = value


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    return build(ExperimentConfig, apply_overrides(read_yaml(path), overrides or []))


def resolved_yaml(cfg: ExperimentConfig) -> str:
    """The complete config, every default filled in: what config.yaml in the run folder holds."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
