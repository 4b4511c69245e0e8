"""Placement density: the study metric against the number of GCT modules and their parameters.

One point per cell (mean over seeds, 95% t interval from :func:`gct_ablate.stats.summarize`),
placed at the cell's ``n_attention_modules`` and ``params_attention`` (trial metrics).
Meant for studies whose varied factors include ``placement``.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure
from rich.table import Table

from gct_ablate.stats import PERCENT_METRICS, StudyResults, summarize


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


def applies(results: StudyResults) -> bool:
    """True when the study varies placement (the density trade-off is worth showing)."""
    return "placement" in results.spec.get("vary", [])


def density_points(results: StudyResults) -> list[DensityPoint]:
    """Per cell with complete runs: modules, parameters and the metric's mean and CI."""
    modules: dict[str, int] = {}
    for t in results.trials:
        n = t.metrics.get("n_attention_modules")
        if t.state == "COMPLETE" and isinstance(n, (int, float)):
            modules.setdefault(t.cell, int(n))
    return [DensityPoint(c.cell, modules.get(c.cell), c.params_total, c.params_attention, c.n,
                         c.mean, c.ci_low, c.ci_high)
            for c in summarize(results).cells if c.mean is not None]


def _metric(results: StudyResults) -> tuple[str, float]:
    metric = str(results.spec.get("metric", "val_top1"))
    return (f"{metric} (%)", 100.0) if metric in PERCENT_METRICS else (metric, 1.0)


def density_table(results: StudyResults, points: list[DensityPoint] | None = None) -> Table:
    """Cells sorted by number of modules: modules, parameters, metric mean and 95% CI."""
    label, scale = _metric(results)
    points = density_points(results) if points is None else points
    table = Table(title=f"{results.study_name}: accuracy vs GCT density")
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


def plot_density(results: StudyResults, points: list[DensityPoint] | None = None) -> Figure:
    """Two panels: the metric vs GCT modules and vs GCT parameters, error bars = 95% CI."""
    label, scale = _metric(results)
    points = density_points(results) if points is None else points
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
    fig.suptitle(f"{results.study_name}: accuracy vs placement density (95% CI)", fontsize=10)
    return fig
