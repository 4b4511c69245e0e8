"""Analyses over a study's stored runs: gate statistics per cell, post-hoc prune curves.

What ``gct-ablate gates`` and ``gct-ablate prune`` do, as functions: they read the trials'
MLflow artifacts (gate statistics, trained weights), write the figures beside the stores
and log them on the study's parent run, and return the numbers for the caller to show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gct_ablate._util import DEFAULT_OUT
from gct_ablate.analysis._figures import png_path, save_figure, slug
from gct_ablate.errors import UsageError


@dataclass
class CellGates:
    """One cell's gate statistics: per seed (``gate_stats`` rows), pooled over seeds, and the
    test of the paper's depth claim (:class:`~gct_ablate.analysis.trend.DepthTrend`)."""

    cell: str
    stats: list[list[dict[str, Any]]]
    pooled: list[dict[str, Any]]
    where: str = ""  # where its figure went ("" when the cell has no GCT module)
    trend: Any = None  # DepthTrend; None when the cell has no GCT module


def gate_analysis(study: str, *, cell: str | None = None, storage: str | None = None,
                  out: str | Path = DEFAULT_OUT, output: Path | None = None) -> list[CellGates]:
    """Pool each cell's per-seed gate statistics and test the depth claim; a figure per cell
    (PNG + parent run)."""
    from gct_ablate.analysis.gates import plot_gates, pool_stats
    from gct_ablate.analysis.trend import depth_trend
    from gct_ablate.artifacts import RunStore, completed_by_cell, load_study_results, tracking_uri

    out = Path(out)
    results = load_study_results(study, storage, out)
    groups = completed_by_cell(results, cell)
    parent = results.tracking.get("mlflow_parent_run_id")
    cells = []
    with RunStore(tracking_uri(results)) as store:
        for name, trials in groups.items():
            stats = [s for t in trials if (s := store.gates(t.mlflow_run_id))]
            found = CellGates(name, stats, pool_stats(stats) if stats else [])
            if stats:
                found.trend = depth_trend(stats)
                fig = plot_gates(stats, f"{study}: {name or '(single cell)'}", found.trend)
                path = png_path(output, out, f"{study}-gates", slug(name), len(groups) > 1)
                found.where = save_figure(fig, path, store.client, parent,
                                          f"gates/{slug(name)}.png")
            cells.append(found)
    if not any(c.stats for c in cells):
        raise UsageError(f"study {study!r} has no gate statistics to plot")
    return cells


@dataclass
class CellPrune:
    """One cell's (or run's) prune curves, averaged over its seeds."""

    label: str
    ranked: list[Any]  # CurveBand per fraction, removal by the redundancy order
    random: list[Any]  # the random-order control
    seeds: int
    removable: int  # modules that can go for less than the tolerance
    modules: int


@dataclass
class PruneResult:
    name: str
    order: str
    tolerance: float
    finetune: int
    cells: list[CellPrune] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # labels with no GCT module
    where: str = ""


def _targets(target: str, cell: str | None, storage: str | None, out: Path,
             tracking_uri: str | None) -> tuple[str, str, str | None, dict[str, list[str]]]:
    """(name, tracking URI, run to log the figure to, {label: run ids}) of a study or run."""
    from gct_ablate.artifacts import completed_by_cell, find_study, looks_like_run_id
    from gct_ablate.artifacts import tracking_uri as study_uri
    from gct_ablate.tracking import resolve_tracking_uri

    results = find_study(target, storage, out)
    if results is not None:
        groups = completed_by_cell(results, cell)
        return (target, tracking_uri or study_uri(results),
                results.tracking.get("mlflow_parent_run_id"),
                {name: [t.mlflow_run_id for t in trials] for name, trials in groups.items()})
    if not looks_like_run_id(target):
        raise UsageError(f"{target!r} is neither a study in {storage or out} nor an MLflow "
                         "run id (32 hex digits)")
    if cell is not None:
        raise UsageError(f"--cell applies to a study; {target} is a run")
    uri = resolve_tracking_uri(out, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UsageError(f"no MLflow store at {uri}; pass --out DIR or --tracking-uri URI")
    return f"run-{target[:8]}", uri, target, {f"run {target[:8]}": [target]}


def prune_analysis(target: str, *, order: str = "gate", tolerance: float = 0.5,
                   finetune: int = 0, seed: int = 0, cell: str | None = None,
                   storage: str | None = None, out: str | Path = DEFAULT_OUT,
                   tracking_uri: str | None = None, device: str = "auto",
                   output: Path | None = None) -> PruneResult:
    """Prune curves of one MLflow run or of every cell of a study (seeds averaged), against
    a random-order control; the figure goes beside the stores and on the run."""
    from gct_ablate.analysis.gates import gct_sites
    from gct_ablate.analysis.prune import max_removable, mean_curve, plot_prune, prune_curve
    from gct_ablate.artifacts import RunStore
    from gct_ablate.train import resolve_device

    if order not in ("gate", "gamma"):
        raise UsageError(f"unknown order {order!r}; valid: gate, gamma")
    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as err:  # unknown or unavailable device
        raise UsageError(str(err)) from None
    out = Path(out)
    name, uri, log_run, groups = _targets(target, cell, storage, out, tracking_uri)
    result = PruneResult(name, order, tolerance, finetune)
    with RunStore(uri) as store:
        for label, run_ids in groups.items():
            ranked, random = [], []
            for run_id in run_ids:
                model, cfg, data = store.trained(run_id, dev)
                if not gct_sites(model):
                    break
                kw = dict(finetune_epochs=finetune, cfg=cfg)
                ranked.append(prune_curve(model, data, dev, order, **kw))
                random.append(prune_curve(model, data, dev, "random", seed=seed + cfg.seed,
                                          **kw))
            if not ranked:
                result.skipped.append(label)
                continue
            a, b = mean_curve(ranked), mean_curve(random)
            result.cells.append(CellPrune(label, a, b, len(ranked), max_removable(a, tolerance),
                                          a[-1].n_removed))
        if not result.cells:
            raise UsageError(f"{target!r} has no GCT module to prune")
        curves = {c.label: (c.ranked, c.random) for c in result.cells}
        fig = plot_prune(curves, order, f"{name}: GCT modules removed by {order} vs random")
        path = png_path(output, out, f"{name}-prune", order, False)
        result.where = save_figure(fig, path, store.client, log_run, f"prune/{order}.png")
    return result
