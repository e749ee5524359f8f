"""The documentation stays true to the repository: the docs/ pages exist with the headings code cites, every
citation of a page and heading resolves, relative links resolve, docs/config.md is what the schema generates,
and nothing points at notes kept outside the repository. Quick: reads files only, starts no processes
(except `git ls-files`, to know which files are tracked)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import typing
from functools import cache
from pathlib import Path

import pytest

from protocol.config import reference
from protocol.config.schema import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

DESIGN_HEADINGS = (
    "Processes",
    "Layers and import rules",
    "Messages",
    "The server step",
    "The worker step",
    "Threading model",
    "The run folder",
)
ALGORITHM_HEADINGS = (
    "APAM",
    "AMSGrad forms",
    "Artificial delay",
    "Error feedback",
    "Compressors",
    "EF14",
    "EF21",
    "EF21-SGD",
    "EF21-SGDM",
    "Lock-step and drift",
    "Naive compression",
    "Error feedback under an adaptive server",
    "Staleness",
    "Learning-rate rules",
    "Stability threshold",
    "Momentum under delay",
    "SSP and barriers",
    "Test oracles",
    "Reproduction targets",
)
PERFORMANCE_HEADINGS = ("Machine facts", "Benchmarks")
TARGETS = ("R1", "R2", "R3", "R4", "R5")
ORACLES = range(1, 9)


# -- reading the repository ---------------------------------------------------------------------------------------
@cache
def tracked_files() -> tuple[Path, ...]:
    """Files under version control (a walk of the tree, minus generated folders, where git is unavailable)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", "runs", "__pycache__", ".venv", "venv", ".ruff_cache", ".pytest_cache"}
        paths = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
            paths += [Path(folder) / f for f in files]
    return tuple(sorted(p for p in paths if p.is_file()))


@cache
def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_files() -> list[tuple[Path, str]]:
    return [(p, t) for p in tracked_files() if (t := text_of(p)) is not None]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def flatten(text: str) -> str:
    """One line of prose: Python string literals split over lines are joined ("a "\\n f"b" -> "a b") and line
    breaks, with the comment markers that start continuation lines, become single spaces."""
    text = re.sub(r"""(["'])[ \t]*\n\s*[rRbBfFuU]{0,2}\1""", "", text)
    return re.sub(r"[ \t]*\n[ \t]*(?:#+[ \t]*)?", " ", text)


# -- markdown -----------------------------------------------------------------------------------------------------
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a markdown text outside fenced code blocks, inline code spans blanked."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line)))
    return out


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    title: str
    line: int


@cache
def headings(path: Path) -> tuple[Heading, ...]:
    out, fenced = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)):
            out.append(Heading(len(m.group(1)), m.group(2), n))
    return tuple(out)


def names(path: Path) -> dict[str, Heading]:
    """The names a heading can be cited by: its title, and 'R3' for a heading 'R3: ...'."""
    out = {}
    for h in headings(path):
        out[h.title] = h
        if m := re.match(r"(R\d+)\b", h.title):
            out.setdefault(m.group(1), h)
    return out


def section_text(path: Path, heading: Heading) -> str:
    """The lines under a heading, up to the next heading of the same or a higher level."""
    lines = path.read_text().splitlines()
    later = [h.line for h in headings(path) if h.line > heading.line and h.level <= heading.level]
    return "\n".join(lines[heading.line : (later[0] - 1) if later else len(lines)])


def oracle_numbers(path: Path) -> set[int]:
    """The numbered items (`N. ...` at the start of a line) under the heading 'Test oracles'."""
    heading = names(path).get("Test oracles")
    if heading is None:
        return set()
    return {int(m.group(1)) for m in re.finditer(r"(?m)^(\d+)\. ", section_text(path, heading))}


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    title = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", title)
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


# -- 1. the pages and the headings code cites ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "page,required,level",
    [
        ("design.md", DESIGN_HEADINGS, 2),
        ("algorithms.md", ALGORITHM_HEADINGS, None),
        ("performance.md", PERFORMANCE_HEADINGS, 2),
    ],
)
def test_pages_have_the_headings_code_cites(page, required, level):
    path = DOCS / page
    assert path.exists(), f"docs/{page} is missing"
    found = {h.title: h for h in headings(path)}
    missing = [t for t in required if t not in found]
    assert not missing, f"docs/{page} lacks the heading(s) {missing}"
    if level is not None:
        wrong = [t for t in required if found[t].level != level]
        assert not wrong, f"docs/{page}: {wrong} must be level-{level} headings ({'#' * level} Title)"
    duplicated = sorted({h.title for h in headings(path) if sum(g.title == h.title for g in headings(path)) > 1})
    assert not duplicated, f"docs/{page} has several headings titled {duplicated}: citations would be ambiguous"


def test_algorithms_has_one_heading_per_target_and_the_numbered_oracles():
    path = DOCS / "algorithms.md"
    for target in TARGETS:
        matching = [h.title for h in headings(path) if re.match(rf"{target}\b", h.title)]
        assert len(matching) == 1, f"docs/algorithms.md needs one heading starting {target}, found {matching}"
    assert oracle_numbers(path) == set(ORACLES), "Test oracles must hold the items numbered 1. to 8."


# -- 2. every citation of a docs page resolves ----------------------------------------------------------------------
CITED = re.compile(r"(?<![\w/.-])docs/((?:[\w.-]+/)*[\w.-]+)\.md")
TARGET_FORM = re.compile(r"\bR(\d+)(?:\s*\(([^)]*)\))?\s+(?:in|of)\s+$")
ORACLE_FORM = re.compile(r"\boracles?\s+(\d[\d\s,\-]*(?:and\s+\d+)?)\s+(?:in|of)\s+$")
NUMBERS = re.compile(r"^[,\s]*(\d+(?:\s*-\s*\d+)?(?:(?:\s*,\s*|\s+and\s+)\d+(?:\s*-\s*\d+)?)*)")


def expand(numbers: str) -> list[int]:
    out = []
    for part in re.split(r"\s*,\s*|\s+and\s+", numbers.strip()):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def match_heading(path: Path, text: str) -> tuple[str, str] | None:
    """(the longest heading name `text` starts with, the rest of text) or None."""
    for name in sorted(names(path), key=len, reverse=True):
        if text.startswith(name) and not re.match(r"[\w-]", text[len(name) : len(name) + 1]):
            return name, text[len(name) :]
    return None


def check_citation(flat: str, start: int, end: int, page: str) -> list[str]:
    """Problems with the citation of docs/<page>.md at flat[start:end] (empty when it resolves)."""
    path = DOCS / f"{page}.md"
    if not path.exists():
        return [f"docs/{page}.md does not exist"]
    before, after = flat[max(0, start - 80) : start], flat[end : end + 300]
    if m := TARGET_FORM.search(before):
        heading = names(path).get(f"R{m.group(1)}")
        if heading is None:
            return [f"docs/{page}.md has no heading starting R{m.group(1)}"]
        part = m.group(2)
        if part and f"({part})" not in section_text(path, heading):
            return [f"docs/{page}.md, {heading.title}: no part ({part})"]
        return []
    if m := ORACLE_FORM.search(before):
        missing = sorted(set(expand(m.group(1))) - oracle_numbers(path))
        return [f"docs/{page}.md, Test oracles: no oracle {missing}"] if missing else []
    if after.startswith((", ", " (")):
        rest = after[2:]
    else:
        return []  # the page alone
    if not re.match(r"[A-Z]", rest):
        return []  # prose, not a heading
    problems = []
    while True:
        found = match_heading(path, rest)
        if found is None:
            return problems + [f"docs/{page}.md has no heading that {rest[:50]!r} starts with"]
        name, rest = found
        if name == "Test oracles" and (m := NUMBERS.match(rest)):
            missing = sorted(set(expand(m.group(1))) - oracle_numbers(path))
            if missing:
                problems.append(f"docs/{page}.md, Test oracles: no oracle {missing}")
            rest = rest[m.end() :]
        if not (m := re.match(r",?\s+and\s+(?=[A-Z])", rest)):
            return problems
        rest = rest[m.end() :]


def test_every_citation_of_a_docs_page_names_an_existing_page_and_heading():
    problems, count = [], 0
    for path, text in text_files():
        flat = flatten(text)
        for m in CITED.finditer(flat):
            count += 1
            for problem in check_citation(flat, m.start(), m.end(), m.group(1)):
                problems.append(f"{rel(path)}: {flat[max(0, m.start() - 30) : m.end() + 50]!r}: {problem}")
    assert count > 0, "no citation found: the scan is broken"
    assert not problems, "citations that do not resolve:\n" + "\n".join(problems)


def _cite(text: str) -> list[str]:
    """Problems of every citation in `text`, written with DOCS/ for docs/ (so that the scan of this file skips it)."""
    flat = text.replace("DOCS/", "docs/")
    return [p for m in CITED.finditer(flat) for p in check_citation(flat, m.start(), m.end(), m.group(1))]


def test_the_citation_check_itself():
    good = "x (DOCS/design.md, The worker step). R3 in DOCS/algorithms.md; DOCS/algorithms.md, Test oracles 4-6 and 8"
    assert _cite(good) == []
    for bad in (
        "(DOCS/design.md, The workers step)",
        "R9 in DOCS/algorithms.md",
        "DOCS/algorithms.md, Test oracles 9",
        "oracle 12 in DOCS/algorithms.md",
        "DOCS/algorithms.md, Staleness and Missing heading",
        "DOCS/nothing_here.md",
    ):
        assert _cite(bad), bad
    joined = flatten('"R2 in "\n        f"DOCS/algorithms.md "')
    assert joined == '"R2 in DOCS/algorithms.md "' and _cite(joined) == []
    assert flatten("(R4 in\n# DOCS/algorithms.md)") == "(R4 in DOCS/algorithms.md)"


# -- 3. relative links in markdown resolve --------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")


def test_relative_links_in_markdown_resolve():
    problems, count = [], 0
    for path in tracked_files():
        if path.suffix.lower() != ".md":
            continue
        for n, line in prose_lines(path.read_text()):
            for target in [m.group(1) for m in LINK.finditer(line)] + [m.group(1) for m in REF_DEF.finditer(line)]:
                if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                    continue
                count += 1
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                if not dest.exists():
                    problems.append(f"{rel(path)}:{n}: {target} does not exist")
                elif anchor and dest.suffix.lower() == ".md" and anchor not in {slug(h.title) for h in headings(dest)}:
                    problems.append(f"{rel(path)}:{n}: {target}: no heading with the anchor #{anchor}")
    assert count > 0, "no link found: the scan is broken"
    assert not problems, "links that do not resolve:\n" + "\n".join(problems)


# -- 4. nothing points at notes outside the repository --------------------------------------------------------------
_NOTES = ("DES" + "IGN", "RESE" + "ARCH")  # spelled apart so that this file does not mention them itself
# the notes' file names as they are spelled (docs/design.md is this repository's own page), and any spelling of
# the research notes' name (the repository has no page of that name)
NOTES_FILE = re.compile(r"\b(?:" + "|".join(_NOTES) + r")\.md\b|(?i:\b" + _NOTES[1] + r"\.md\b)")
NOTES_WORD = re.compile(r"\b(?:" + "|".join(_NOTES) + r")\b")
NOTES_PLACE = "/work/" + "shared"


def _hits(pattern: re.Pattern, also: str | None = None) -> list[str]:
    out = []
    for path, text in text_files():
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line) or (also and also in line):
                out.append(f"{rel(path)}:{n}: {line.strip()[:120]}")
    return out


def test_no_file_names_the_notes_kept_outside_the_repository():
    hits = _hits(NOTES_FILE, also=NOTES_PLACE)
    assert not hits, "the design and research notes are not part of the repository; cite docs/ instead:\n" + "\n".join(
        hits
    )


def test_no_file_cites_the_notes_by_name():
    """The notes' names in capitals followed by a target or section (as in '<NAME> R2') cite them too."""
    hits = _hits(NOTES_WORD)
    assert not hits, "cite docs/algorithms.md (e.g. 'R2 in docs/algorithms.md') instead of the notes:\n" + "\n".join(
        hits
    )


# -- 5. docs/config.md is generated from the schema -----------------------------------------------------------------
def test_config_reference_is_up_to_date():
    path = DOCS / "config.md"
    current = path.read_text() if path.exists() else ""
    assert current == reference.render(), f"docs/config.md is out of date: run `{reference.COMMAND}`"


def _setting_keys(cls: type, path: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        keys += _setting_keys(hints[f.name], key) if dataclasses.is_dataclass(hints[f.name]) else [key]
    return keys


def test_config_reference_has_a_documented_row_for_every_key():
    rows = {r.key: r for s in reference.sections() for r in s.rows}
    assert sorted(rows) == sorted(_setting_keys(ExperimentConfig))
    undocumented = [k for k, r in rows.items() if not r.comment]
    assert not undocumented, f"add a comment to these fields of protocol/config/schema.py: {undocumented}"


SAMPLE = '''
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def require(ok, key, message):
    pass


@dataclass(frozen=True)
class Inner:
    """Inner things."""

    depth: int = 3  # how deep
    # spread over
    # two lines
    mode: Literal["a", "b"] = "a"  # and inline
    # a note about the group, then a blank line: not this field's comment

    limit: float | None = None

    def check(self):
        require(self.depth >= 1, "depth", "must be >= 1")
        for key in ("limit",):
            require(True, key, f"must be below {self.depth}")
        for key in ("depth",):  # the same loop variable: each loop's rules stay with its own keys
            require(True, key, "must be odd")


@dataclass(frozen=True)
class Deeper(Inner):
    width: int = 1  # its own field


@dataclass(frozen=True)
class Root:
    name: str = "x"  # the | name <tag>
    sizes: tuple[int, ...] = (1, 2)  # sizes
    inner: Inner = field(default_factory=Inner)  # the inner section
    late: bool = False  # a key added later

    def check(self):
        require(True, "inner.mode", "cannot be b with late")
'''


def test_the_generator_reads_comments_types_defaults_and_checks(tmp_path):
    name = "taups_reference_sample"
    (tmp_path / f"{name}.py").write_text(SAMPLE)
    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        found = reference.sections(module.Root)
        inherited = reference.field_comments(module.Deeper)
        text = reference.render(module.Root, command="make docs")
    finally:
        del sys.modules[name]
    assert [s.path for s in found] == ["", "inner"]
    assert found[1].intro == "the inner section"
    rows = {r.key: r for s in found for r in s.rows}
    assert list(rows) == ["name", "sizes", "late", "inner.depth", "inner.mode", "inner.limit"]
    assert rows["inner.depth"] == reference.Row(
        "inner.depth", "int", "`3`", "how deep", ("must be >= 1", "must be odd")
    )
    assert rows["inner.mode"].comment == "spread over two lines and inline"
    assert rows["inner.mode"].type == "one of `a`, `b`"
    assert rows["inner.mode"].rules == ("cannot be b with late",)
    assert rows["inner.limit"].comment == ""
    assert rows["inner.limit"].type == "float or `null`" and rows["inner.limit"].default == "`null`"
    assert rows["inner.limit"].rules == ("must be below ...",)
    assert rows["sizes"].type == "list of int" and rows["sizes"].default == "`[1, 2]`"
    assert "| `name` | string | `x` | the \\| name &lt;tag> |  |" in text
    assert "## inner" in text and "`make docs`" in text
    assert inherited == {
        "depth": "how deep",
        "mode": "spread over two lines and inline",
        "limit": "",
        "width": "its own field",
    }


def test_the_generator_command_checks_the_page(capsys):
    assert reference.main(["--check"]) == 0
