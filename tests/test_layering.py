"""docs/design.md, Layers and import rules: import directions, and pure math holds no sockets, clocks or logging."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "protocol": {"protocol"},
    "ps": {"protocol", "ps"},
    "worker": {"protocol", "worker"},
    "sync": {"protocol", "ps", "worker", "sync"},  # the sync role reuses the server's arithmetic
    "launch": {"protocol", "ps", "worker", "sync", "launch"},
    "experiments": {"protocol", "ps", "worker", "sync", "launch", "experiments"},  # never tests/: it ships as a package
}
PROJECT = set(ALLOWED) | {"bench", "tests"}
PURE = [
    "ps/optim.py",
    "ps/policy.py",
    "ps/aggregate.py",
    "worker/ef.py",
    "worker/compressors.py",
    "protocol/sparsify.py",
    "ps/downlink.py",
    "worker/downlink.py",
]
IO_MODULES = {"zmq", "socket", "time", "logging", "subprocess", "threading"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_directions(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = (_imports(path) & PROJECT) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_protocol_knows_no_ml():
    for path in (ROOT / "protocol").rglob("*.py"):
        assert not {"torch.nn", "ps", "worker"} & _imports(path), path
        assert "torch.nn" not in path.read_text(), path


@pytest.mark.parametrize("rel", PURE)
def test_pure_math_has_no_io(rel):
    bad = _imports(ROOT / rel) & IO_MODULES
    assert not bad, f"{rel} imports {bad}"


def test_no_pickle_anywhere():
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            assert "pickle" not in _imports(path), path
