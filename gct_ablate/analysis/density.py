"""Placement density: the study metric against the number of GCT modules and their parameters.

One point per cell of a :class:`~gct_ablate.stats.Summary` (mean over seeds, 95% t
interval), placed at the cell's number of attention modules and their parameters.
Meant for studies whose varied factors include ``placement``.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure
from rich.table import Table

from gct_ablate.stats import PERCENT_METRICS, Summary


@dataclass(frozen=True)
class DensityPoint:
    cell: str
    n_modules: int | None
    params_total: int | None
    params_attention: int | None
    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None


def applies(summary: Summary) -> bool:
    """True when the study varies placement (the density trade-off is worth showing)."""
    return "placement" in summary.spec.get("vary", [])


def density_points(summary: Summary) -> list[DensityPoint]:
    """Per cell with complete runs: modules, parameters and the metric's mean and CI."""
    return [DensityPoint(c.cell, c.n_modules, c.params_total, c.params_attention, c.n,
                         c.mean, c.ci_low, c.ci_high)
            for c in summary.cells if c.mean is not None]


def _metric(summary: Summary) -> tuple[str, float]:
    return (f"{summary.metric} (%)", 100.0) if summary.metric in PERCENT_METRICS \
        else (summary.metric, 1.0)


def density_table(summary: Summary, points: list[DensityPoint] | None = None) -> Table:
    """Cells sorted by number of modules: modules, parameters, metric mean and 95% CI."""
    label, scale = _metric(summary)
    points = density_points(summary) if points is None else points
    table = Table(title=f"{summary.study_name}: accuracy vs GCT density")
    for col in ("cell", "GCT modules", "params", "GCT params", "n", label, "95% CI"):
        table.add_column(col, justify="left" if col == "cell" else "right")

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{scale * x:.2f}"

    for p in sorted(points, key=lambda p: (p.n_modules is None, p.n_modules or 0)):
        ci = "n/a" if p.ci_low is None else f"[{num(p.ci_low)}, {num(p.ci_high)}]"
        table.add_row(p.cell or "(single)", *("n/a" if v is None else f"{v:,}" for v in
                      (p.n_modules, p.params_total, p.params_attention)), str(p.n),
                      num(p.mean), ci)
    return table


MAX_GROUPS = 8  # colour groups (the other factors' levels) before only the reference's


def _groups(summary: Summary, points: list[DensityPoint]
            ) -> tuple[dict[str, list[DensityPoint]], bool]:
    """Points grouped by the levels of the factors other than placement; (groups, all
    shown). Past ``MAX_GROUPS`` only the reference's group is kept."""
    ref = _others(summary.reference_cell)
    groups: dict[str, list[DensityPoint]] = {}
    for p in points:
        groups.setdefault(_others(p.cell), []).append(p)
    if len(groups) <= MAX_GROUPS:
        return groups, True
    return {ref: groups.get(ref, [])}, False


def _others(cell: str) -> str:
    return " ".join(part for part in cell.split() if not part.startswith("placement="))


def _placement(cell: str) -> str:
    found = [part.split("=", 1)[1] for part in cell.split() if part.startswith("placement=")]
    return found[0] if found else (cell or "(single)")


def plot_density(summary: Summary, points: list[DensityPoint] | None = None) -> Figure:
    """Two panels: the metric vs GCT modules and vs GCT parameters, error bars = 95% CI.

    Each point is labelled with its placement beside it (no legend over the data); when
    other factors vary too, a colour per combination of their levels, named in a legend
    outside the axes (past a few combinations, only the reference's levels are drawn).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    label, scale = _metric(summary)
    points = density_points(summary) if points is None else points
    groups, everything = _groups(summary, points)
    legend = len(groups) > 1
    names = [g or "(placement only)" for g in groups]
    right = 0.3 + (0.06 * max(map(len, names)) + 0.4 if legend else 0.0)
    fig = Figure(figsize=(9 + (right - 0.3), 4.2))  # fixed margins: constrained is slow
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    w = fig.get_figwidth()
    fig.subplots_adjust(left=0.75 / w, right=1 - right / w, top=0.89, bottom=0.14, wspace=0.08)
    for ax, key, xlabel in ((axes[0], "n_modules", "GCT modules"),
                            (axes[1], "params_attention", "GCT parameters")):
        xs = [v for p in points if (v := getattr(p, key)) is not None]
        dodge = 0.012 * ((max(xs) - min(xs)) if xs else 0.0) or 0.05
        for i, found in enumerate(groups.values()):
            color = f"C{i % 10}"
            shift = (i - (len(groups) - 1) / 2) * dodge  # groups side by side at one x
            shown = sorted((p for p in found if getattr(p, key) is not None),
                           key=lambda p: getattr(p, key))
            for j, p in enumerate(shown):
                x, y = getattr(p, key) + shift, scale * p.mean
                err = None if p.ci_low is None else [[y - scale * p.ci_low],
                                                     [scale * p.ci_high - y]]
                ref = p.cell == summary.reference_cell
                ax.errorbar([x], [y], yerr=err, fmt="D" if ref else "o", color=color,
                            capsize=3, ms=5, label=names[i] if j == 0 else None)
                if i == 0:  # the placement, beside the point (alternately above, below)
                    ax.annotate(_placement(p.cell), (x, y), xytext=(6, 5 if j % 2 else -11),
                                textcoords="offset points", fontsize=7, color="0.25",
                                bbox={"fc": "white", "ec": "none", "alpha": 0.75, "pad": 0.4})
            if len(shown) > 1 and legend:
                ax.plot([getattr(p, key) + shift for p in shown],
                        [scale * p.mean for p in shown], "-", color=color, lw=0.8, alpha=0.6)
        ax.margins(x=0.14)  # room for the labels of the outermost points
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    if legend:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="upper right", fontsize=7,
                   frameon=False, bbox_to_anchor=(1.0, 0.89))
    scope = "" if everything else " (the reference's levels of the other factors)"
    fig.suptitle(f"{summary.study_name}: accuracy vs placement density, 95% CI; ◆ = "
                 f"reference{scope}", fontsize=10)
    return fig
