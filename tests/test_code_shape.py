"""Code shape: no function in the packages is longer than MAX_LINES lines, counted from its `def` line to its
last line (AST: end_lineno - lineno + 1; decorators not counted, its docstring counted).

A longer one is split into named helpers, read top to bottom. ALLOWED lists the exceptions, each with the
reason it stays long; an entry that is no longer needed (the function was split, renamed or removed) fails
too, so the list only shrinks.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "ps", "worker", "sync", "launch", "bench", "experiments")
MAX_LINES = 40

# "module:qualified.name" -> why it stays long (one line each; keep it to a handful). Empty: none does.
ALLOWED: dict[str, str] = {}


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def length(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    assert fn.end_lineno is not None
    return fn.end_lineno - fn.lineno + 1


def function_lengths(path: Path) -> dict[str, int]:
    """'module:qualified.name' -> lines, for every function and method of the file (nested ones too)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{module}:{prefix}{child.name}"] = length(child)
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return out


def _all_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for path in _sources():
        lengths.update(function_lengths(path))
    return lengths


def test_functions_are_short():
    lengths = _all_lengths()
    assert len(lengths) > 500, "the scan found too few functions: it is broken"
    long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in ALLOWED}
    listing = "\n".join(f"  {name}: {n} lines" for name, n in sorted(long.items()))
    assert not long, f"functions over {MAX_LINES} lines (split them into named helpers):\n{listing}"


def test_allow_list_is_short_and_needed():
    assert len(ALLOWED) <= 5, "the allow-list is for a few exceptions, not a backlog"
    lengths = _all_lengths()
    stale = sorted(name for name in ALLOWED if lengths.get(name, 0) <= MAX_LINES)
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove from ALLOWED: {stale}"


def test_the_measure():
    tree = ast.parse('@decorated\ndef f():\n    """Doc\n    string."""\n    a = 1\n\n    return a\n')
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert length(fn) == 6  # from `def` to `return`, the docstring and the blank line included
    lengths = function_lengths(ROOT / "tests" / "test_code_shape.py")
    assert lengths["tests.test_code_shape:test_the_measure"] > 0
