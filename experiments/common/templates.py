"""Report prose lives in markdown templates beside each study's code, not in Python strings: Python supplies
the numbers, tables and lists, the template says what they mean.

A template file (a study's report.md.tmpl) is a list of named fragments, each a string.Template:

    <!-- fragment: setup -->
    $workers worker, $model on $dataset ($n_train train / $n_test test samples), ...

Text before the first fragment is a note to the template's reader and is not rendered. In a fragment,
$name and ${name} are filled in and $$ is a literal $. Filling is strict both ways: a placeholder without
a value raises, and so does a value that no placeholder uses, so a typo on either side cannot silently
drop a number or leave a $name in a report. Runs of blank lines collapse to one, so a section that is
left out (an empty value) leaves no gap.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from string import Template

FRAGMENT = re.compile(r"^<!-- fragment: (\w+) -->$\n?", re.M)
BLANK_LINES = re.compile(r"\n{3,}")


@cache
def fragments(package: str, filename: str = "report.md.tmpl") -> dict[str, Template]:
    """The fragments of a template file shipped in `package` (read once; the files are package data)."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = FRAGMENT.split(text)  # [note, name, body, name, body, ...]
    names = parts[1::2]
    if len(set(names)) != len(names):
        raise ValueError(f"{package}/{filename}: a fragment name is used twice: {names}")
    return {name: Template(body.strip("\n")) for name, body in zip(names, parts[2::2])}


def placeholders(template: Template) -> set[str]:
    """The names a template fills in ($name and ${name}; $$ is an escape, not a name)."""
    found = set()
    for m in template.pattern.finditer(template.template):
        name = m.group("named") or m.group("braced")
        if name:
            found.add(name)
    return found


def render(package: str, fragment: str, filename: str = "report.md.tmpl", /, **values: object) -> str:
    """One fragment of `package`'s template file with every placeholder filled in from `values`."""
    template = fragments(package, filename)[fragment]
    unused = set(values) - placeholders(template)
    if unused:
        raise KeyError(f"{package}/{filename}, fragment {fragment!r} has no placeholder for {sorted(unused)}")
    return BLANK_LINES.sub("\n\n", template.substitute(values))


class Prose:
    """A study's template file, bound once per module: prose = Prose(__package__); prose("setup", n=3)."""

    def __init__(self, package: str, filename: str = "report.md.tmpl") -> None:
        self.package, self.filename = package, filename

    def __call__(self, fragment: str, /, **values: object) -> str:
        return render(self.package, fragment, self.filename, **values)
