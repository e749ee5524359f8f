"""The config reference, docs/config.md, generated from the schema (protocol/config/schema.py).

    python -m protocol.config.reference            print it
    python -m protocol.config.reference --write    write docs/config.md
    python -m protocol.config.reference --check    exit 1 if docs/config.md differs

Everything comes from the dataclass tree under ExperimentConfig, so a key added to the schema appears
without touching this file: sections are the dataclass-typed fields (nested ones too), rows are the
other fields. A row's type comes from its annotation (Literal choices via typing.get_args), its default
from the dataclass, its meaning from the field's comment, and the messages a bad value is refused with
from the `require(...)` calls of the `check` methods. Comments are not kept at run time, so they are
read from the module source with `tokenize`: the `# ...` lines directly above a field, then the inline
`# ...` on its own lines.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import sys
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from protocol.config.schema import ExperimentConfig

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "docs" / "config.md"
COMMAND = "python -m protocol.config.reference --write"


@dataclass(frozen=True)
class Row:
    key: str  # dotted path, e.g. optimizer.lr
    type: str
    default: str
    comment: str
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    path: str  # "" for the top level, else the dotted path of the section (task, task.synthetic, ...)
    intro: str  # the comment of the field that holds the section, or the class docstring
    rows: tuple[Row, ...]


# -- reading the source ----------------------------------------------------------------------------------
@functools.cache
def _module_source(module_name: str) -> tuple[ast.Module, dict[int, str], frozenset[int]]:
    """(syntax tree, line -> comment text, lines that hold only a comment) of a module."""
    source = inspect.getsource(sys.modules[module_name])
    comments: dict[int, str] = {}
    own_line: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            comments[line] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                own_line.add(line)
    return ast.parse(source), comments, frozenset(own_line)


def _class_node(cls: type) -> ast.ClassDef:
    tree, _, _ = _module_source(cls.__module__)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return node
    raise LookupError(f"class {cls.__qualname__} not found at the top level of {cls.__module__}")


def field_comments(cls: type) -> dict[str, str]:
    """Each field's documentation: the comment lines directly above it, then its inline comment.

    Fields inherited from dataclass bases are read from the base that declares them."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_field_comments(klass))
    return out


def _own_field_comments(cls: type) -> dict[str, str]:
    _, comments, own_line = _module_source(cls.__module__)
    out: dict[str, str] = {}
    for node in _class_node(cls).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in own_line:
            above.insert(0, comments[line])
            line -= 1
        end = node.end_lineno or node.lineno
        inline = [comments[n] for n in range(node.lineno, end + 1) if n in comments and n not in own_line]
        out[node.target.id] = " ".join(" ".join(above + inline).split())
    return out


def class_doc(cls: type) -> str:
    """The class's own docstring (not the signature dataclasses make up when there is none)."""
    doc = ast.get_docstring(_class_node(cls)) or ""
    return " ".join(doc.split())


def check_rules(cls: type) -> dict[str, list[str]]:
    """Messages of the `require(condition, key, message)` calls in cls.check, by key (relative to cls).

    The methods `check` calls to split its work, named `_check...`, count as part of it. A key given by a
    loop variable over a tuple of strings counts for each of them; a message built by an f-string shows
    '...' where the value goes; calls whose key is computed otherwise are left out.
    """
    checks = [
        n
        for n in _class_node(cls).body
        if isinstance(n, ast.FunctionDef) and (n.name == "check" or n.name.startswith("_check"))
    ]
    looped = _looped_keys(checks)
    rules: dict[str, list[str]] = {}
    for node in (n for check in checks for n in ast.walk(check)):
        args = _require_args(node)
        if args is None:
            continue
        key_node, msg_node = args
        if isinstance(key_node, ast.Constant) and isinstance(key_node.value, str):
            keys = [key_node.value]
        elif id(node) in looped:
            keys = looped[id(node)]
        else:
            continue
        message = _message_text(msg_node)
        if message is None:
            continue
        for key in keys:
            if message not in rules.setdefault(key, []):
                rules[key].append(message)
    return rules


def _require_args(node: ast.AST) -> tuple[ast.expr, ast.expr] | None:
    """(key, message) of a `require(condition, key, message)` call; None for any other node."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "require"
        and len(node.args) == 3
    ):
        return node.args[1], node.args[2]
    return None


def _looped_keys(checks: list[ast.FunctionDef]) -> dict[int, list[str]]:
    """id of each require call inside `for key in ("a", "b", ...)` whose key is that loop's variable -> the
    strings (each loop its own: two loops may use the same variable name)."""
    out: dict[int, list[str]] = {}
    for loop in (n for check in checks for n in ast.walk(check)):
        if not (isinstance(loop, ast.For) and isinstance(loop.target, ast.Name) and isinstance(loop.iter, ast.Tuple)):
            continue
        values = [e.value for e in loop.iter.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        for node in (n for stmt in loop.body for n in ast.walk(stmt)):
            args = _require_args(node)
            if args is not None and isinstance(args[0], ast.Name) and args[0].id == loop.target.id:
                out[id(node)] = values
    return out


def _message_text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(value.value)
            else:
                parts.append("...")
        return "".join(parts)
    return None


# -- types and defaults ------------------------------------------------------------------------------------
def type_text(hint: Any) -> str:
    """A field annotation in words, with Literal choices listed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        options = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(options) + (" or `null`" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_text(args[0])}"
        return f"list of {len(args)}: " + ", ".join(type_text(a) for a in args)
    if origin is list:
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    if hint is Any:
        return "any"
    if hint is str:
        return "string"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint)


def default_text(value: Any) -> str:
    """A default as it would be written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(default_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {default_text(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


# -- the tree ------------------------------------------------------------------------------------------------
def sections(root: type = ExperimentConfig) -> list[Section]:
    """One section per dataclass in the tree under `root`, depth first in field order; the top level first.

    A rule that a class states about a key of one of its sections (the top level's check about
    staleness.apply_every, say) is listed with that key.
    """
    found: list[Section] = []
    cross: dict[str, list[str]] = {}
    _walk(root, "", class_doc(root), found, cross)
    out = []
    for s in found:
        rows = []
        for r in s.rows:
            extra = [m for m in cross.get(r.key, []) if m not in r.rules]
            rows.append(dataclasses.replace(r, rules=r.rules + tuple(extra)) if extra else r)
        out.append(dataclasses.replace(s, rows=tuple(rows)))
    return out


def _walk(cls: type, path: str, intro: str, out: list[Section], cross: dict[str, list[str]]) -> None:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rules = check_rules(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        key = _join(path, f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            nested.append((hint, key, comments.get(f.name, "") or class_doc(hint)))
            continue
        default = _default(f)
        rows.append(
            Row(
                key=key,
                type=type_text(hint),
                default="required" if default is dataclasses.MISSING else f"`{default_text(default)}`",
                comment=comments.get(f.name, ""),
                rules=tuple(rules.get(f.name, ())),
            )
        )
    for key, messages in rules.items():
        if "." in key:
            cross.setdefault(_join(path, key), []).extend(messages)
    out.append(Section(path, intro, tuple(rows)))
    for hint, key, doc in nested:
        _walk(hint, key, doc, out, cross)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# -- markdown ------------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


HEADER = """# Config reference

<!-- Generated from protocol/config/schema.py by `{command}`; do not edit by hand. -->

An experiment is one YAML file (`configs/*.yaml`); every key is optional and takes the default below when
absent. The run folder's `config.yaml` holds the resolved config, every default filled in. This page is
generated from the schema, `protocol/config/schema.py`: each key's meaning is the comment beside its field,
its checks are the schema's own. To change the page, change the schema's comments and run
`{command}` (a test fails while the two differ).

- **Overrides.** Any key can be set on the command line as `key.sub=value` after the config file, e.g.
  `python -m launch configs/quickstart.yaml workers=2 optimizer.lr=3e-3 worker.slowdown=[1,4]`. The value is
  read as YAML, so lists (`[1, 4]`), `true`/`false` and `null` work; quote an override that holds spaces.
  `sweep.KEY=[v1, v2]` adds a swept key (e.g. `'sweep.optimizer.lr=[3e-3, 1e-2]'`).
- **Numbers.** Numbers such as `1e-3` are accepted for int and float keys, in the file and on the command
  line (PyYAML reads an exponent without a decimal point as a string; the schema converts it).
  An int key takes `1e3` but refuses `1.5`. Every float must be finite (`.inf`, `1e999` and `.nan` are
  refused) and every int must fit in 64 bits; the *refused with* column lists each key's own bounds.
- **Checks.** Every key and value is checked before any process starts. A key written twice in one
  mapping is refused, naming both lines (YAML itself would keep the last). An unknown key names the closest
  known one; a bad value stops with `error: config key 'optimizer.lr': must be > 0` and exit code 2.
  The *refused with* column lists the messages the schema's checks give for a bad value of each key (some
  checks concern a combination with other keys, e.g. sync mode).
"""


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def render(root: type = ExperimentConfig, command: str = COMMAND) -> str:
    """The reference page for the dataclass tree under `root`."""
    found = sections(root)
    lines = [HEADER.format(command=command)]
    lines.append("Sections: " + ", ".join(f"`{s.path}`" if s.path else "top level" for s in found) + ".\n")
    for s in found:
        lines.append(f"## {s.path or 'Top level'}\n")
        if s.intro:
            lines.append(_cell(_sentence(s.intro)) + "\n")
        if not s.rows:
            continue
        lines.append("| key | type | default | meaning | refused with |")
        lines.append("|---|---|---|---|---|")
        for r in s.rows:
            rules = "; ".join(r.rules)
            lines.append(f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.comment)} | {_cell(rules)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protocol.config.reference", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {OUTPUT.relative_to(ROOT)}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 if {OUTPUT.relative_to(ROOT)} is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(text)
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
        return 0
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
