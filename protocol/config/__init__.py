"""The experiment config: the typed schema every process reads (schema.py), the mapping -> dataclass
builder (typed.py) and the one YAML loader with command-line overrides (loader.py)."""
