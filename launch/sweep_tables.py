"""A sweep's results as tables: sweep.csv (one row per point), sweep_groups.csv and sweep.md.

The grouped table has one row per combination of the non-seed keys, with the mean, the sample
standard deviation and n over that combination's seeds. Failed points are listed with their error
and left out of the statistics (n says how many points contributed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.sweep import SweepPoint, combo_label, show, sweep_keys
from launch.tables import FIGURES, Stat, figures, fmt, fmt_stat, markdown_table, stat, write_csv
from launch.wording import count
from launch.writes import write_text, writing
from protocol.runfolder.records import RunSummary


@dataclass
class PointResult:
    point: SweepPoint
    run_dir: Path
    summary: RunSummary | None  # summary.json's content; None when the point failed
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Group:
    label: str  # "workers=2 mode=async", or "all points" when only the seed is swept
    values: list  # the non-seed values, in sweep order
    results: list[PointResult]

    @property
    def succeeded(self) -> list[PointResult]:
        return [r for r in self.results if r.ok]

    def stats(self) -> dict[str, Stat]:
        rows = [figures(r.summary) for r in self.succeeded]
        return {name: stat([row[name] for row in rows]) for name in FIGURES}


def group_results(results: list[PointResult]) -> list[Group]:
    """Points that differ only in the seed, together, in the order they first appear."""
    groups: dict[str, Group] = {}
    for r in results:
        combo = r.point.group
        label = combo_label(combo) or "all points"
        groups.setdefault(label, Group(label, [v for _, v in combo], [])).results.append(r)
    return list(groups.values())


def write_tables(
    sweep_dir: Path,
    sweep: dict[str, list],
    results: list[PointResult],
    total: int,
    reports: Sequence[tuple[str, Path]] = (),
) -> None:
    keys = sweep_keys(sweep)
    group_keys = [k for k in keys if k != "seed"]
    groups = group_results(results)
    with writing(sweep_dir / "sweep.csv"):
        write_csv(sweep_dir / "sweep.csv", _point_header(keys), [_point_row(r) for r in results])
    with writing(sweep_dir / "sweep_groups.csv"):
        write_csv(sweep_dir / "sweep_groups.csv", _group_header(group_keys), [_group_row(g) for g in groups])
    write_text(sweep_dir / "sweep.md", _markdown(sweep_dir, keys, group_keys, results, groups, total, reports))


def _point_header(keys: list[str]) -> list[str]:
    return ["point", "folder", "status", *keys, *FIGURES, "error"]


def _point_row(r: PointResult) -> list:
    f = figures(r.summary)
    values = [show(v) for _, v in r.point.combo]
    return [r.point.index, r.point.folder, "ok" if r.ok else "failed", *values, *(f[k] for k in FIGURES), r.error]


def _group_header(group_keys: list[str]) -> list[str]:
    cols = [f"{name}_{part}" for name in FIGURES for part in ("mean", "std", "n")]
    return [*group_keys, "points", "failed", *cols]


def _group_row(g: Group) -> list:
    stats = g.stats()
    cols = [x for name in FIGURES for x in (stats[name].mean, stats[name].std, stats[name].n)]
    return [*(show(v) for v in g.values), len(g.results), len(g.results) - len(g.succeeded), *cols]


def _markdown(
    sweep_dir: Path,
    keys: list[str],
    group_keys: list[str],
    results: list[PointResult],
    groups: list[Group],
    total: int,
    reports: Sequence[tuple[str, Path]],
) -> str:
    failed = [r for r in results if not r.ok]
    parts = [
        f"# Sweep {sweep_dir.name}",
        f"{len(results)} of {count(total, 'point')} run, {len(failed)} failed; swept: {', '.join(keys)}.",
        "## Points",
        markdown_table(["#", *keys, "status", *FIGURES], [_point_cells(r) for r in results]),
        "## Mean ± sample std over seeds",
        markdown_table([*group_keys, "n", *FIGURES], [_group_cells(g) for g in groups]),
    ]
    if failed:
        parts.append("## Failed points")
        parts += [f"{r.point.index}. `{r.point.folder}` ({r.point.label}):\n\n```\n{r.error}\n```" for r in failed]
    if reports:
        parts.append("## Plots")
        parts.append("\n".join(f"- [{title}]({path.relative_to(sweep_dir).as_posix()})" for title, path in reports))
    return "\n\n".join(parts) + "\n"


def _point_cells(r: PointResult) -> list:
    return [
        r.point.index,
        *(show(v) for _, v in r.point.combo),
        _status(r),
        *(fmt(figures(r.summary)[k]) for k in FIGURES),
    ]


def _group_cells(g: Group) -> list:
    return [*(show(v) for v in g.values), _n(g), *(fmt_stat(s, len(g.succeeded)) for s in g.stats().values())]


def _status(r: PointResult) -> str:
    return f"[ok]({r.point.folder}/summary.json)" if r.ok else "**failed**"


def _n(g: Group) -> str:
    ok = len(g.succeeded)
    return str(ok) if ok == len(g.results) else f"{ok} ({len(g.results) - ok} failed)"
