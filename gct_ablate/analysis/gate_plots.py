"""Gate statistics over seeds, without torch: pool them, draw the paper-style figure, a table.

The rows are :func:`gct_ablate.analysis.gates.gate_stats` dictionaries (one list per seed),
as trials log them (``gates/gates.json``), so reports and the ``gates`` command read stored
statistics without loading a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure
from rich import box
from rich.table import Table

from gct_ablate.analysis.trend import DepthTrend, depth_trend, trend_text

NEAR = 0.05  # |gate - 1| (and |gamma|) tolerance of "near identity"


# -------------------------------------------------------------------------------- pooling
def pool_stats(stats: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Pool several seeds' :func:`gate_stats` per layer index.

    Means are averaged; a ``*_std`` becomes the pooled spread over all channels of all seeds,
    ``sqrt(mean(std^2) + var(means))`` (equal channel counts). ``n_seeds`` counts the seeds.
    """
    by_index: dict[int, list[dict[str, Any]]] = {}
    for one_seed in stats:
        for row in one_seed:
            by_index.setdefault(int(row["index"]), []).append(row)
    pooled = []
    for index in sorted(by_index):
        rows = by_index[index]
        out: dict[str, Any] = {k: rows[0][k] for k in ("index", "name", "stage", "channels")}
        out["n_seeds"] = len(rows)
        for key in rows[0]:
            if key in out or key.endswith("_std"):
                continue
            values = [float(r[key]) for r in rows]
            mean = math.fsum(values) / len(values)
            out[key] = mean
            std_key = key[: -len("_mean")] + "_std" if key.endswith("_mean") else None
            if std_key and std_key in rows[0]:
                within = math.fsum(float(r[std_key]) ** 2 for r in rows) / len(rows)
                between = math.fsum((v - mean) ** 2 for v in values) / len(values)
                out[std_key] = math.sqrt(within + between)
        pooled.append(out)
    return pooled


# ------------------------------------------------------------------------------- plotting
def plot_gates(stats: Sequence[Sequence[dict[str, Any]]], title: str = "",
               trend: DepthTrend | None = None) -> Figure:
    """Paper-style figure: gamma per layer (mean, band = channel spread pooled over seeds),
    and mean gate with its spread plus the near-identity fraction. One inner list per seed.
    The gamma panel says the depth-trend verdict (``trend``, else computed from ``stats``)
    and shades the first and last thirds it compares."""
    rows = pool_stats(stats)
    trend = depth_trend(stats) if trend is None else trend
    fig = Figure(figsize=(8, 6))  # fixed margins: a constrained layout doubles the cost
    fig.subplots_adjust(left=0.1, right=0.91, bottom=0.14, top=0.86, hspace=0.06)
    ax_g, ax_t = fig.subplots(2, 1, sharex=True)
    x = [r["index"] for r in rows]

    def band(ax: Any, key: str, color: str, label: str) -> None:
        mean = [r[f"{key}_mean"] for r in rows]
        std = [r[f"{key}_std"] for r in rows]
        ax.plot(x, mean, "o-", color=color, ms=3, lw=1.2, label=label)
        low = [m - s for m, s in zip(mean, std, strict=True)]
        high = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)

    band(ax_g, "gamma", "C0", "gamma (mean ± std over channels)")
    k = len(rows) // 3
    if k:  # the thirds the depth test compares
        for lo, hi in ((x[0], x[k - 1]), (x[-k], x[-1])):
            ax_g.axvspan(lo - 0.5, hi + 0.5, color="0.5", alpha=0.08, lw=0)
    ax_g.set_title(trend_text(trend, short=True), fontsize=8, loc="left")
    ax_g.axhline(0, color="k", lw=0.8)
    ax_g.text(0.995, 0.97, "compete (γ > 0)", transform=ax_g.transAxes, ha="right", va="top",
              fontsize=8, color="0.35")
    ax_g.text(0.995, 0.03, "cooperate (γ < 0)", transform=ax_g.transAxes, ha="right",
              va="bottom", fontsize=8, color="0.35")
    ax_g.set_ylabel("gamma")
    band(ax_t, "gate", "C1", "gate (mean ± std)")
    ax_t.axhline(1, color="k", lw=0.8)
    ax_t.set_ylabel("gate on validation data")
    ax_t.set_xlabel("GCT module (depth order)")
    ax_n = ax_t.twinx()
    ax_n.bar(x, [r["near_identity"] for r in rows], color="C2", alpha=0.25, width=0.8,
             label=f"channels with |gate-1| ≤ {NEAR}")
    ax_n.set_ylim(0, 1.05)
    ax_n.set_ylabel("near-identity fraction")
    ax_t.set_zorder(ax_n.get_zorder() + 1)
    ax_t.patch.set_visible(False)
    for ax in (ax_g, ax_t):
        for prev, cur in zip(rows[:-1], rows[1:], strict=True):
            if cur["stage"] != prev["stage"]:
                ax.axvline(cur["index"] - 0.5, color="0.8", lw=0.8, ls=":")
    handles = [h for ax in (ax_g, ax_t, ax_n) for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, 0.0))  # below the axes: no legend over the data
    n_seeds = max((r["n_seeds"] for r in rows), default=0)
    fig.suptitle(f"{title} ({n_seeds} seed{'s' * (n_seeds != 1)} pooled)" if title
                 else f"GCT gates ({n_seeds} seed{'s' * (n_seeds != 1)} pooled)", fontsize=10)
    return fig


def gates_table(pooled: Sequence[dict[str, Any]], title: str = "",
                trend: DepthTrend | None = None) -> Table:
    """Rich table of :func:`pool_stats` rows, one per GCT module (fits 80 columns); with
    ``trend``, its verdict closes the caption."""
    caption = (f"γ, gate: mean and sd over channels (and samples); id %: channels with "
               f"|gate-1| <= {NEAR} on every sample; γ≈0 %: channels with |γ| < {NEAR}")
    if trend is not None:
        caption += f"\n{trend_text(trend)}"
    table = Table(title=title or None, caption=caption, box=box.SIMPLE_HEAD, padding=0)
    for col in ("#", "module", "C", "α", "γ", "γ sd", "β", "gate", "g sd", "id %", "γ≈0 %"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for r in pooled:
        table.add_row(
            str(r["index"]), r["name"].removesuffix(".attn").replace("layer", ""),
            str(r["channels"]), f"{r['alpha_mean']:.2f}", f"{r['gamma_mean']:+.3f}",
            f"{r['gamma_std']:.3f}", f"{r['beta_mean']:+.3f}", f"{r['gate_mean']:.3f}",
            f"{r['gate_std']:.3f}", f"{100 * r['near_identity']:.0f}",
            f"{100 * r['gamma_small']:.0f}",
        )
    return table
