"""The noise-floor report: per setting a plateau table, the claims checked, f(x) over the rounds; plateaus
against n for every setting; the asynchronous lines; per-run cross-checks; and what the numbers say."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt

from experiments.common.report import header, save_png, table
from experiments.common.stats import rolling
from experiments.common.sweeps import Sweep
from experiments.noise_floor.data import BLOCKS, Curve, by_label, curve, sgd_floor, slope, verdicts
from experiments.noise_floor.notes import discussion, setup

SMOOTH = 100  # rounds in the rolling mean the curves are drawn with
COLORS = {"EF21-SGD": "tab:red", "EF21-SGDM eta=0.1": "tab:blue", "EF21-SGDM eta=0.01": "tab:green", "EF14-SGD": "0.45"}


def setting_of(part: str) -> str:
    return part.split("-")[0]


def write_report(
    sweeps: dict[str, Sweep], plan_parts: list[str], base: Path, out: Path, command: str, quick: bool
) -> Path:
    curves = [curve(name, p) for name, s in sweeps.items() for p in s.points if p.ok]
    settings = list(dict.fromkeys(setting_of(c.part) for c in curves))
    title = "EF21-SGD against EF21-SGDM noise floors (R3 in docs/algorithms.md)"
    commands = [sweeps[name].command for name in plan_parts if name in sweeps]
    text = [header(title, quick, command, commands, base), *invocations(base), *setup(curves, plan_parts, sweeps)]
    figs = {}
    for s in settings:
        mine = [c for c in curves if setting_of(c.part) == s]
        text += setting_section(s, mine)
        figs[f"curves_{s}"] = curves_figure(mine)
        text.append(f"![f(x) over the rounds, {s}](img/noise_floor_curves_{s}.png)")
    figs["plateau"] = plateau_figure(curves, settings)
    text += [
        "## Plateau against n",
        "Mean f over the last half of each run against the number of workers, "
        "synchronous rounds; dotted: plain SGD's floor on the same problem (no compression).",
        "![plateau against n](img/noise_floor_plateau.png)",
    ]
    text += async_section(curves) + details_section(curves) + discussion(curves)
    for name, fig in figs.items():
        save_png(fig, out / "img" / f"noise_floor_{name}.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise_floor.md").write_text("\n\n".join(text) + "\n")
    return out / "noise_floor.md"


def invocations(base: Path) -> list[str]:
    """The --parts invocations that filled the folder (each one locked command on a shared machine)."""
    path = base / "invocations.txt"
    if not path.exists():
        return []
    lines = "\n".join(f"    {line}" for line in path.read_text().splitlines() if line.strip())
    return [
        f"The folder was filled in parts, by these invocations in this order (each one command under the "
        f"shared machine's lock, each under ~10 minutes); without --parts the script runs every part in one go:"
        f"\n\n{lines}"
    ]


def setting_section(name: str, curves: list[Curve]) -> list[str]:
    c0 = curves[0]
    sync = by_label([c for c in curves if c.sync])
    ns = sorted({c.n for c in curves if c.sync})
    rows = [
        [label, *(_with_error(series[n]) if n in series else "-" for n in ns), _fmt_slope(slope(series))]
        for label, series in sync.items()
    ]
    rows.append(
        ["plain SGD, theory (no compression)", *(f"{sgd_floor(c0.dim, c0.lr, c0.sigma, n):.3g}" for n in ns), "-1.00"]
    )
    rounds = ", ".join(f"n={n}: {int(max(c.last_round for c in curves if c.sync and c.n == n)) + 1}" for n in ns)
    return [
        f"## Setting {name}: d = {c0.dim}, gamma = {c0.lr:g}, sigma = {c0.sigma:g}, Top-1",
        f"Plateau = mean f(x_t) over the last half of the rounds (rounds run: {rounds}), +- the standard "
        f"error of that mean from {BLOCKS} batch means (rough: consecutive blocks are correlated); exponent b "
        "of a least-squares fit plateau ~ n^b.",
        table(["method", *(f"n = {n}" for n in ns), "exponent b"], rows),
        f"### The claims, setting {name}",
        "\n".join(verdicts(curves)),
        *late_check(curves),
    ]


FLAT = (0.8, 1.25)  # Q4 / Q3 outside this: the averaged half may still hold the climb's transient


def late_check(curves: list[Curve]) -> list[str]:
    """Runs whose averaged half is not flat, and the claims again with the last quarter as the plateau."""
    uneven = [c for c in curves if c.sync and not FLAT[0] <= c.quarters() <= FLAT[1]]
    if not uneven:
        return []
    late = [replace(c, window=0.75) for c in curves]
    runs = "; ".join(
        f"{c.label} at n = {c.n}: Q4 / Q3 = {c.quarters():.2f}, last half {c.plateau():.3g}, last "
        f"quarter {replace(c, window=0.75).plateau():.3g}"
        for c in uneven
    )
    return [
        f"In some runs the averaged half is not flat (Q4 / Q3 outside {FLAT[0]:g}..{FLAT[1]:g}): {runs}. "
        "Started at the optimum, f climbs, and with eta = 0.01 it overshoots and swings for hundreds of "
        "rounds (see the figure), so a short run can keep part of that swing in its second half; at d = 10 "
        "f also wanders slowly around its plateau. The same claims with the mean over the last quarter as "
        "the plateau:",
        "\n".join(verdicts(late)),
    ]


def _with_error(c: Curve) -> str:
    _, se = c.spread()
    return f"{c.plateau():.3g} +- {se:.2g}"


def _fmt_slope(b: float | None) -> str:
    return "-" if b is None else f"{b:+.2f}"


def async_section(curves: list[Curve]) -> list[str]:
    asyn = [c for c in curves if not c.sync]
    if not asyn:
        return []
    rows = []
    for c in sorted(asyn, key=lambda c: c.key):
        twin = next(
            (
                s
                for s in curves
                if s.sync
                and s.n == c.n
                and s.method == c.method
                and s.eta == c.eta
                and setting_of(s.part) == setting_of(c.part)
            ),
            None,
        )
        rows.append(
            [
                c.label,
                c.n,
                f"{c.lr:g}",
                int(c.summary.get("updates", 0)),
                f"{c.summary.get('staleness_mean', 0):.2f}",
                f"{c.plateau():.3g}",
                f"{twin.plateau():.3g}" if twin else "-",
            ]
        )
    return [
        "## Asynchronous workers (extra)",
        "The same n workers without rounds: the server steps on g = mean_i g_i at every push (staleness as it "
        "comes), with gamma / n so that n pushes move x as far as one synchronous round. The x axis is server "
        "steps / n (pushes per worker); the plateau is the mean f over the last half of the pushes.",
        table(
            ["method", "n", "gamma", "server steps", "mean staleness", "plateau", "synchronous plateau (gamma x n)"],
            rows,
        ),
    ]


def details_section(curves: list[Curve]) -> list[str]:
    rows = []
    for c in sorted(curves, key=lambda c: (c.part, c.key)):
        s = c.summary
        ev, k = c.eval_plateau()
        pushes = s.get("pushes_applied", 0)
        rows.append(
            [
                c.part,
                c.label,
                c.n,
                int(s.get("updates", 0)),
                pushes,
                f"{pushes / max(1, s.get('updates', 1)):.2f}",
                s.get("pushes_rejected", 0),
                f"{c.plateau():.3g}",
                f"{c.spread()[0]:.3g}",
                f"{c.quarters():.2f}",
                f"{ev:.3g} ({k})",
                f"{s.get('ef_drift_max') or 0:.1e}",
                f"{s.get('uplink_bytes', 0) / max(1, s.get('pushes_received', 1)):.0f}",
            ]
        )
    return [
        "## Run details and cross-checks",
        "Per run: server updates (rounds); pushes applied (synchronous: n per update); pushes refused at the "
        "end (`stopped`, one per worker); the plateau from the per-round f and the standard deviation of f "
        "over the same half; Q4 / Q3, the mean f of the run's last quarter over that of its third quarter "
        "(near 1: the second half is flat); the evaluator's mean f of server snapshots over the same half, "
        "with the number of snapshots, as an independent check of the plateau; the EF21 mirror's largest "
        "relative drift; mean bytes per push (an EF21 worker's first push is dense).",
        table(
            [
                "part",
                "method",
                "n",
                "updates",
                "pushes applied",
                "per update",
                "refused",
                "plateau",
                "std f",
                "Q4 / Q3",
                "evaluator",
                "ef drift",
                "B/push",
            ],
            rows,
        ),
    ]


def curves_figure(curves: list[Curve]):
    ns = sorted({c.n for c in curves if c.sync})
    plateaus = [c.plateau() for c in curves]
    ylim = (min(plateaus) / 100, max(plateaus) * 10)  # the climb from f = 0 would stretch the axis to 1e-12
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.4), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        for c in sorted([c for c in curves if c.n == n], key=lambda c: (not c.sync, c.key)):
            color = COLORS.get(c.label.replace(", async", ""))
            style = dict(lw=1.0 if c.sync else 0.8, ls="-" if c.sync else "--", color=color)
            if c.method == "ef14":
                style["lw"] = 0.8
            ax.plot(c.rounds, rolling(list(c.f), SMOOTH), label=c.label, **style)
        c0 = curves[0]
        ax.axhline(sgd_floor(c0.dim, c0.lr, c0.sigma, n), color="k", ls=":", lw=0.8, label="plain SGD floor")
        ax.set(title=f"n = {n}", xlabel="round t (async: pushes per worker)", yscale="log", ylim=ylim)
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel(f"f(x_t), rolling mean over {SMOOTH} rounds")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"d = {curves[0].dim}, gamma = {curves[0].lr:g}, Top-1, start at the optimum", fontsize=9)
    return fig


def plateau_figure(curves: list[Curve], settings: list[str]):
    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 3.4), squeeze=False)
    for ax, s in zip(axes[0], settings):
        mine = [c for c in curves if setting_of(c.part) == s and c.sync]
        for label, series in by_label(mine).items():
            ns = sorted(series)
            ax.plot(ns, [series[n].plateau() for n in ns], "o-", label=label, color=COLORS.get(label))
        ns = sorted({c.n for c in mine})
        c0 = mine[0]
        ax.plot(ns, [sgd_floor(c0.dim, c0.lr, c0.sigma, n) for n in ns], "k:", label="plain SGD floor")
        ax.set(
            title=f"{s}: d = {c0.dim}, gamma = {c0.lr:g}",
            xlabel="workers n",
            ylabel="plateau of f",
            xscale="log",
            yscale="log",
        )
        ax.grid(alpha=0.3, which="both")
        ax.title.set_fontsize(9)
    axes[0][-1].legend(fontsize=7)
    return fig
