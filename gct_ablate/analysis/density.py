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


def plot_density(summary: Summary, points: list[DensityPoint] | None = None) -> Figure:
    """Two panels: the metric vs GCT modules and vs GCT parameters, error bars = 95% CI."""
    label, scale = _metric(summary)
    points = density_points(summary) if points is None else points
    fig = Figure(figsize=(9, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, xlabel in ((axes[0], "n_modules", "GCT modules"),
                            (axes[1], "params_attention", "GCT parameters")):
        for i, p in enumerate(points):
            x = getattr(p, key)
            if x is None:
                continue
            y = scale * p.mean
            err = None if p.ci_low is None else [[y - scale * p.ci_low],
                                                 [scale * p.ci_high - y]]
            ax.errorbar([x], [y], yerr=err, fmt="o", color=f"C{i % 10}", capsize=3,
                        label=p.cell or "(single)")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{summary.study_name}: accuracy vs placement density (95% CI)", fontsize=10)
    return fig
