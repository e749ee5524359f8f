"""The report templates (experiments/common/templates.py): fragments are filled strictly, and every
study's template and code agree on which fragments exist."""

import ast
import re
from pathlib import Path

import pytest

from experiments.common.templates import fragments, render

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [
    "common",
    "artificial_delay",
    "stability_edge",
    "noise_floor",
    "ef21_logreg",
    "async_vs_sync",
    "fashion_mnist",
]


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A throwaway package holding one template file."""
    (tmp_path / "tmplpkg").mkdir()
    (tmp_path / "tmplpkg" / "__init__.py").write_text("")
    (tmp_path / "tmplpkg" / "report.md.tmpl").write_text(
        "A note for the reader, not rendered.\n\n"
        "<!-- fragment: one -->\n$n runs cost $$${cost}.\n\n"
        "<!-- fragment: sections -->\n# Title\n\n$optional\n\n## Next\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fragments.cache_clear()
    yield "tmplpkg"
    fragments.cache_clear()


def test_a_fragment_is_filled_and_dollars_escape(package):
    assert render(package, "one", n=3, cost="1.50") == "3 runs cost $1.50."
    assert set(fragments(package)) == {"one", "sections"}


def test_a_missing_or_an_unused_value_raises(package):
    with pytest.raises(KeyError, match="cost"):
        render(package, "one", n=3)
    with pytest.raises(KeyError, match="typo"):
        render(package, "one", n=3, cost="1", typo="x")


def test_an_empty_section_leaves_no_gap(package):
    assert render(package, "sections", optional="") == "# Title\n\n## Next"


def _string_literals(folder: Path) -> set[str]:
    out = set()
    for path in folder.glob("*.py"):
        out |= {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}
    return {s for s in out if isinstance(s, str)}


@pytest.mark.parametrize("name", PACKAGES)
def test_every_fragment_is_used_and_every_use_exists(name):
    folder = ROOT / "experiments" / name
    template = "header.md.tmpl" if name == "common" else "report.md.tmpl"
    frags = fragments(f"experiments.{name}", template)
    literals = _string_literals(folder)
    assert not set(frags) - literals, f"fragments no code renders: {sorted(set(frags) - literals)}"
    calls = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("prose", "COMMON") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant):
                    calls.add(first.value)
    assert calls <= set(frags), f"fragments missing from {template}: {sorted(calls - set(frags))}"
    assert all(t.template.strip() for t in frags.values()), "an empty fragment"


# facts that follow from the data set, the config or the machine, typed as numbers in a report's prose
TYPED_FACTS = re.compile(r"\b(1438|359|1797|143-144|9610)\b|\b0\.28 points|\brank 3\b|\b(2|two)[ -](shared )?cores?\b")


@pytest.mark.parametrize("name", PACKAGES)
def test_templates_type_no_data_facts(name):
    for path in (ROOT / "experiments" / name).glob("*.md.tmpl"):
        found = TYPED_FACTS.search(path.read_text())
        assert found is None, f"{path.name}: {found.group(0)!r} should be computed and filled in"
