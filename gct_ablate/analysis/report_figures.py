"""The report's figures: forest plot, interaction plot, learning curves, the gates map.

Every figure reads a :class:`~gct_ablate.stats.Summary` (and, for the curves, the trial
records), draws on an Agg canvas (pyplot's global state untouched) and keeps its labels
off the data: verdicts are written beside the rows, a figure with many cells is a grid of
small panels with shared axes, a legend (when one is needed) sits outside the axes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from gct_ablate import stats
from gct_ablate.stats import Summary, TrialRecord

VERDICT_COLOR = {stats.BETTER: "#1a9850", stats.WORSE: "#d73027",
                 stats.EQUIVALENT: "#4575b4", stats.INCONCLUSIVE: "#e08214",
                 stats.TOO_FEW: "#888888", stats.REFERENCE: "#000000"}
REFERENCE_COLOR = "0.45"
MAX_COLUMNS = 6  # panels per row of a small-multiples grid


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))  # fixed margins: a constrained layout is slow
    FigureCanvasAgg(fig)
    return fig


def margins(fig: Figure, left: float, right: float, top: float, bottom: float,
            wspace: float | None = None, hspace: float | None = None) -> None:
    """Fixed margins in inches (the axes fill the rest)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h,
                        bottom=bottom / h, wspace=wspace, hspace=hspace)


def text_width(chars: int, size: float = 8.0) -> float:
    """About how wide (inches) a line of ``chars`` characters is at ``size`` points."""
    return 0.0075 * size * chars


def small_multiples(n: int, panel: tuple[float, float] = (1.9, 1.45)
                    ) -> tuple[Figure, list[Any]]:
    """A grid of ``n`` panels with shared axes (unused ones hidden), room for a title
    above and axis labels at the left and bottom."""
    rows, cols = _grid(n)
    left, right, top, bottom, gap_w, gap_h = 0.75, 0.15, 0.62, 0.55, 0.12, 0.38
    width = left + right + cols * panel[0] + (cols - 1) * gap_w
    height = top + bottom + rows * panel[1] + (rows - 1) * gap_h
    fig = _figure(width, height)
    axes = list(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel())
    margins(fig, left, right, top, bottom, wspace=gap_w / panel[0], hspace=gap_h / panel[1])
    for ax in axes[n:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[:n]):  # x tick labels under the last panel of each column
        if i + cols < n:
            ax.tick_params(labelbottom=False)
        else:
            ax.tick_params(labelbottom=True)
    return fig, axes[:n]


def cell_label(cell: str) -> str:
    return cell or "(single cell)"


def _unit(s: Summary) -> str:
    return "points" if s.percent else s.metric


def _grid(n: int, columns: int = MAX_COLUMNS) -> tuple[int, int]:
    cols = max(1, min(columns, n))
    return math.ceil(n / cols), cols


def _labels(fig: Figure, x: str, y: str) -> None:
    """Axis labels of a small-multiples grid, once for all panels."""
    fig.text(0.5, 0.08 / fig.get_figheight(), x, ha="center", va="bottom", fontsize=9)
    fig.text(0.08 / fig.get_figwidth(), 0.5, y, ha="left", va="center", rotation=90,
             fontsize=9)


# ----------------------------------------------------------------------------- forest
def forest_figure(summary: Summary) -> Figure:
    """Delta of each cell against the reference with its 95% CI, the +-margin band shaded;
    each row's verdict written at its right (no legend)."""
    s = summary
    scale = s.scale
    others = [c for c in s.cells if not c.is_reference]
    rows = len(others) + 1
    labels = [f"{cell_label(s.reference_cell)} (reference)"] + [cell_label(c.cell)
                                                                 for c in others]
    verdicts = [(stats.REFERENCE, stats.REFERENCE)] + [(s.verdict_text(c), c.verdict)
                                                       for c in others]
    left = 0.3 + text_width(max(map(len, labels)))
    right = 0.25 + text_width(max(len(v) for v, _ in verdicts))
    fig = _figure(max(9.0, left + right + 5.0), 1.05 + 0.27 * rows)
    ax = fig.subplots()
    margins(fig, left, right, top=0.42, bottom=0.6)
    if s.margin is not None:
        m = scale * s.margin
        ax.axvspan(-m, m, color="#4575b4", alpha=0.12, lw=0)
        for x in (-m, m):
            ax.axvline(x, color="#4575b4", lw=0.8, ls="--", alpha=0.7)
    ax.axvline(0, color="k", lw=0.9)
    ax.plot([0], [0], "D", color="k", ms=5)
    for y, c in enumerate(others, start=1):
        if c.delta is None:
            continue
        color = VERDICT_COLOR.get(c.verdict, "k")
        if c.ci_simultaneous is not None:  # at the family's level, as the verdicts
            lo, hi = c.ci_simultaneous
            ax.plot([scale * lo, scale * hi], [y, y], "-", color=color, lw=1.8,
                    solid_capstyle="butt")
        filled = c.verdict in stats.DECIDED
        ax.plot([scale * c.delta], [y], "o", ms=5.5, color=color,
                mfc=color if filled else "white", mew=1.5)
    ax.set_yticks(range(rows), labels, fontsize=8)
    ax.set_ylim(rows - 0.5, -0.6)
    text = blended_transform_factory(ax.transAxes, ax.transData)
    for y, (shown, verdict) in enumerate(verdicts):
        ax.text(1.015, y, shown, transform=text, va="center", ha="left", fontsize=8,
                color=VERDICT_COLOR.get(verdict, "k"), clip_on=False)
    better = "higher" if s.maximize else "lower"
    ax.set_xlabel(f"Δ {s.metric} vs the reference ({_unit(s)}; {better} is better)")
    ax.grid(axis="x", alpha=0.3)
    margin = ("" if s.margin is None
              else f"; shaded: ±margin {s.points(s.margin)} {_unit(s)}")
    ax.set_title(f"{s.study_name}: Δ vs the reference, {s.confidence:.0%} CI{margin}",
                 fontsize=10, loc="left")
    ax.tick_params(axis="y", length=0)
    return fig


# ----------------------------------------------------------------------------- interaction
def interaction_figure(summary: Summary) -> Figure | None:
    """Two varied factors: the cell means (95% CI) against the first factor's levels, a line
    per level of the second; None unless exactly two factors vary."""
    s = summary
    if len(s.factors) != 2:
        return None
    first, second = s.factors
    xs = [lv.level for lv in first.levels]
    series = [lv.level for lv in second.levels]
    by = {(c.levels.get(first.name), c.levels.get(second.name)): c for c in s.cells}
    legend = max(len(second.name), *(len(x) for x in series)) + 4
    fig = _figure(8.5, 4.4)
    ax = fig.subplots()
    margins(fig, 0.75, 0.35 + text_width(legend), top=0.42, bottom=0.6)
    width = 0.3 / max(1, len(series) - 1) if len(series) > 1 else 0.0
    for i, level in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        pts = [(x + offset, c) for x, name in enumerate(xs)
               if (c := by.get((name, level))) is not None and c.mean is not None]
        if not pts:
            continue
        color = f"C{i % 10}"
        ax.plot([x for x, _ in pts], [s.scale * c.mean for _, c in pts], "-", color=color,
                lw=1.3, label=f"{second.name}={level}")
        for x, c in pts:
            err = (None if c.ci_low is None or c.ci_high is None
                   else [[s.scale * (c.mean - c.ci_low)], [s.scale * (c.ci_high - c.mean)]])
            ax.errorbar([x], [s.scale * c.mean], yerr=err, fmt="o", color=color, ms=4,
                        capsize=2, lw=1)
            if c.is_reference:
                ax.plot([x], [s.scale * c.mean], "o", ms=11, mfc="none", mec="k", mew=1.2)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(first.name)
    ax.set_ylabel(s.metric + (" (%)" if s.percent else ""))
    ax.grid(alpha=0.3)
    ax.legend(title=second.name, fontsize=8, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False,
              labels=series, handles=ax.get_legend_handles_labels()[0])
    ax.set_title(f"{s.study_name}: cell means ± {s.confidence:.0%} CI (ringed: reference); "
                 "parallel lines = no interaction", fontsize=10, loc="left")
    return fig


# ----------------------------------------------------------------------------- curves
def cell_curves(trials: Sequence[TrialRecord]) -> dict[str, dict[int, list[float]]]:
    """cell -> epoch -> the metric reported at that epoch by each COMPLETE trial."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        if t.state != "COMPLETE":
            continue
        for epoch, value in t.curve.items():
            if math.isfinite(value):
                out[t.cell][epoch].append(value)
    return {cell: dict(epochs) for cell, epochs in out.items()}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def curves_figure(summary: Summary, trials: Sequence[TrialRecord]) -> Figure | None:
    """Learning curves, a panel per cell (shared axes): the validation metric per epoch, mean
    over seeds with a ±1 sd band; the reference's mean dashed grey in every panel. None
    when no trial reported per-epoch values."""
    s = summary
    curves = cell_curves(trials)
    cells = [c for c in s.cells if curves.get(c.cell)]
    if not cells:
        return None
    fig, axes = small_multiples(len(cells))
    axes[0].xaxis.set_major_locator(MaxNLocator(5, integer=True))  # shared: all panels
    axes[0].yaxis.set_major_locator(MaxNLocator(4))

    def line(cell: str) -> tuple[list[int], list[float], list[float]]:
        epochs = sorted(curves[cell])
        ms = [_mean_sd(curves[cell][e]) for e in epochs]
        return epochs, [s.scale * m for m, _ in ms], [s.scale * sd for _, sd in ms]

    ref = line(s.reference_cell) if curves.get(s.reference_cell) else None
    for ax, c in zip(axes, cells, strict=False):
        epochs, mean, sd = line(c.cell)
        color = "k" if c.is_reference else VERDICT_COLOR.get(c.verdict, "C0")
        if ref is not None and not c.is_reference:
            ax.plot(ref[0], ref[1], "--", color=REFERENCE_COLOR, lw=1)
        ax.fill_between(epochs, [m - d for m, d in zip(mean, sd, strict=True)],
                        [m + d for m, d in zip(mean, sd, strict=True)], color=color,
                        alpha=0.2, lw=0)
        ax.plot(epochs, mean, "-", color=color, lw=1.4, marker="o" if len(epochs) < 4 else "",
                ms=3)
        ax.set_title(cell_label(c.cell) + (" (ref)" if c.is_reference else ""), fontsize=7.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    _labels(fig, "epoch", f"validation {s.metric}" + (" (%)" if s.percent else ""))
    fig.suptitle(f"{s.study_name}: learning curves, mean over seeds ± 1 sd "
                 "(dashed: the reference; colour: the verdict)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- gates
def gates_heatmap(summary: Summary, pooled: dict[str, list[dict[str, Any]]]) -> Figure | None:
    """Every cell's GCT modules at a glance: a row per cell, a column per module (depth
    order), coloured by gamma (mean over channels and seeds; > 0 compete, < 0 cooperate)
    and by the mean |gate - 1| (how far the module is from the identity). ``pooled``: cell
    -> :func:`~gct_ablate.analysis.gate_plots.pool_stats` rows. None unless two cells have gates.
    """
    import numpy as np

    s = summary
    cells = [c.cell for c in s.cells if pooled.get(c.cell)]
    if len(cells) < 2:
        return None
    width = max(len(pooled[c]) for c in cells)

    def grid(key: str) -> Any:
        out = np.full((len(cells), width), np.nan)
        for i, cell in enumerate(cells):
            for j, row in enumerate(pooled[cell]):
                out[i, j] = row[key]
        return np.ma.masked_invalid(out)

    labels = [cell_label(c) + (" (ref)" if c == s.reference_cell else "") for c in cells]
    left = 0.35 + text_width(max(map(len, labels)))
    fig = _figure(max(10.0, left + 8.5), 1.35 + 0.22 * len(cells))
    margins(fig, left, 0.65, top=0.5, bottom=0.5, wspace=0.3)  # right: colour bar labels
    axes = fig.subplots(1, 2, sharey=True)
    gamma, dev = grid("gamma_mean"), grid("gate_dev")
    limit = float(np.abs(gamma).max()) or 1.0
    for ax, data, cmap, lims, title in (
            (axes[0], gamma, "RdBu_r", (-limit, limit), "gamma (red: compete, blue: cooperate)"),
            (axes[1], dev, "viridis", (0.0, float(dev.max()) or 1.0), "mean |gate − 1|")):
        shown = ax.imshow(data, aspect="auto", cmap=cmap, vmin=lims[0], vmax=lims[1],
                          interpolation="nearest")
        ax.set_facecolor("0.9")  # modules a cell does not have
        fig.colorbar(shown, ax=ax, fraction=0.05, pad=0.02)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("GCT module (depth order)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(10, integer=True))
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(len(cells)), labels, fontsize=7.5)
    fig.suptitle(f"{s.study_name}: GCT modules per cell, mean over channels and seeds",
                 fontsize=10)
    return fig
