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


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping key written twice (PyYAML would keep the last one silently),
    naming the key's dotted path and both lines. `key_prefix` is the path of the document itself (an override's
    key). Merge keys (`<<: *base`) may still be overridden: only keys written in the same mapping count."""

    key_prefix = ""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicates(node, self.key_prefix, set())
        return super().construct_document(node)


def _refuse_duplicates(node: yaml.Node, path: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicates(item, f"{path}[{i}]", seen)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[tuple[str, str], yaml.Node] = {}
    for key_node, value_node in node.value:
        name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
        if name is None or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        dotted = f"{path}.{name}" if path else name
        earlier = first.setdefault((key_node.tag, name), key_node)
        if earlier is not key_node:
            where = key_node.start_mark
            raise ConfigError(
                dotted,
                f"is written twice in {where.name}: line {earlier.start_mark.line + 1} and line {where.line + 1} "
                "(remove one; YAML would silently keep the last)",
            )
        _refuse_duplicates(value_node, dotted, seen)


def strict_load(stream: Any, prefix: str = "", name: str | None = None) -> Any:
    """One YAML document, read with StrictLoader; `name` replaces the stream's name in messages."""
    loader = StrictLoader(stream)
    loader.key_prefix = prefix
    loader.name = name or loader.name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = strict_load(f)
    except FileNotFoundError:
        raise ConfigError("<file>", f"{path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError("<file>", f"{path} is a folder, not a YAML file") from None
    except OSError as exc:
        raise ConfigError("<file>", f"{path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
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
            value = strict_load(raw, prefix=key, name=f"the override {item!r}") if raw else ""
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
