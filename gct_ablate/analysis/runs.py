"""Analyses over a study's stored runs: gate statistics and the depth claim per cell,
post-hoc prune curves by removal mode, pruned networks exported.

What ``gct-ablate gates`` and ``gct-ablate prune`` do, as functions: they read the trials'
MLflow artifacts (gate statistics, trained weights), write the figures beside the stores
and log them on the study's parent run, and return the numbers for the caller to show
(:func:`gate_analysis` -> :class:`CellGates` with its ``trend``; :func:`prune_analysis` ->
:class:`PruneResult`; one network's curves by mode: :func:`prune_curves_by_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gct_ablate._util import DEFAULT_OUT
from gct_ablate.analysis._figures import png_path, save_figure, slug
from gct_ablate.errors import UsageError
from gct_ablate.store import keys


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
    from gct_ablate.artifacts import (
        RunStore,
        completed_by_cell,
        gate_stats_by_cell,
        load_study_results,
        tracking_uri,
    )

    out = Path(out)
    results = load_study_results(study, storage, out)
    groups = completed_by_cell(results, cell)
    parent = results.tracking.get(keys.PARENT_RUN_ID)
    cells = []
    with RunStore(tracking_uri(results)) as store:
        by_cell = gate_stats_by_cell(results, store, groups)
        for name in groups:
            stats = by_cell[name]
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
    ranked: list[Any]  # CurveBand per fraction, removal by the redundancy order (``mode``)
    random: list[Any]  # the random-order control (``mode``)
    seeds: int
    removable: int  # modules that can go for less than the tolerance (``mode``)
    modules: int
    curves: dict[str, tuple[list[Any], list[Any]]] = field(default_factory=dict)  # by mode
    unfoldable: list[str] = field(default_factory=list)  # fold fell back to identity here


@dataclass(frozen=True)
class Exported:
    """One pruned network written by ``--export`` (:func:`gct_ablate.checkpoint.load_model`
    reads it back)."""

    path: Path
    run_id: str
    seed: int
    removed: int  # GCT modules taken out
    modules: int  # GCT modules the trained network had
    params_before: int
    params_total: int
    val_top1: float
    val_loss: float


@dataclass
class PruneResult:
    name: str
    order: str
    tolerance: float
    finetune: int
    mode: str = "identity"
    cells: list[CellPrune] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # labels with no GCT module
    where: str = ""
    exports: list[Exported] = field(default_factory=list)


def _targets(target: str, cell: str | None, storage: str | None, out: Path,
             tracking_uri: str | None) -> tuple[str, str, str | None, dict[str, list[str]]]:
    """(name, tracking URI, run to log the figure to, {label: run ids}) of a study or run."""
    from gct_ablate.artifacts import completed_by_cell, find_results
    from gct_ablate.artifacts import tracking_uri as study_uri
    from gct_ablate.store.keys import looks_like_run_id
    from gct_ablate.tracking import resolve_tracking_uri

    results = find_results(target, storage, out)
    if results is not None:
        groups = completed_by_cell(results, cell)
        return (target, tracking_uri or study_uri(results),
                results.tracking.get(keys.PARENT_RUN_ID),
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


def prune_curves_by_mode(model: Any, data: Any, device: Any, order: str,
                         modes: tuple[str, ...] = ("identity", "fold"), *, seed: int = 0,
                         finetune: int = 0, cfg: Any = None
                         ) -> dict[str, tuple[list[Any], list[Any]]]:
    """One trained network's prune curves per removal mode: {mode: (by ``order``, random)}."""
    from gct_ablate.analysis.prune import prune_curve

    kw = dict(finetune_epochs=finetune, cfg=cfg)
    random_seed = seed + (cfg.seed if cfg is not None else 0)
    return {mode: (prune_curve(model, data, device, order, mode=mode, **kw),
                   prune_curve(model, data, device, "random", seed=random_seed, mode=mode,
                               **kw))
            for mode in modes}


def prune_analysis(target: str, *, order: str = "gate", tolerance: float = 0.5,
                   finetune: int = 0, seed: int = 0, cell: str | None = None,
                   storage: str | None = None, out: str | Path = DEFAULT_OUT,
                   tracking_uri: str | None = None, device: str = "auto",
                   output: Path | None = None, mode: str = "identity",
                   export: Path | None = None) -> PruneResult:
    """Prune curves of one MLflow run or of every cell of a study (seeds averaged), against
    a random-order control; the figure goes beside the stores and on the run.

    ``mode`` fold also computes the identity curves, for comparison. ``export``: each run of
    the (one) cell pruned as far as ``tolerance`` allows on its own curve, written as a plain
    network (one file per seed when the cell has several).
    """
    from gct_ablate.analysis.fold import MODES, unfoldable
    from gct_ablate.analysis.gates import gct_sites
    from gct_ablate.analysis.prune import max_removable, mean_curve, plot_prune
    from gct_ablate.artifacts import RunStore
    from gct_ablate.train import resolve_device

    if order not in ("gate", "gamma"):
        raise UsageError(f"unknown order {order!r}; valid: gate, gamma")
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if export is not None and finetune:
        raise UsageError("--export writes the networks as pruned, without fine-tuning; leave "
                         "--finetune out")
    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as err:  # unknown or unavailable device
        raise UsageError(str(err)) from None
    out = Path(out)
    name, uri, log_run, groups = _targets(target, cell, storage, out, tracking_uri)
    if export is not None and len(groups) > 1:
        raise UsageError(f"--export writes the networks of one cell; pass --cell (cells: "
                         f"{', '.join(repr(c) for c in groups)})")
    modes = ("identity",) if mode == "identity" else ("identity", "fold")
    result = PruneResult(name, order, tolerance, finetune, mode)
    with RunStore(uri) as store:
        for label, run_ids in groups.items():
            per_run, notes = [], []
            for run_id in run_ids:
                model, cfg, data = store.trained(run_id, dev)
                if not gct_sites(model):
                    break
                curves = prune_curves_by_mode(model, data, dev, order, modes, seed=seed,
                                              finetune=finetune, cfg=cfg)
                per_run.append(curves)
                notes = unfoldable(model, gct_sites(model)) if mode == "fold" else []
                if export is not None:
                    result.exports.append(_export(export, len(run_ids) > 1, run_id, model, cfg,
                                                  data, order, mode, tolerance,
                                                  curves[mode][0]))
            if not per_run:
                result.skipped.append(label)
                continue
            means = {m: (mean_curve([c[m][0] for c in per_run]),
                         mean_curve([c[m][1] for c in per_run])) for m in modes}
            a, b = means[mode]
            result.cells.append(CellPrune(label, a, b, len(per_run), max_removable(a, tolerance),
                                          a[-1].n_removed, means, notes))
        if not result.cells:
            raise UsageError(f"{target!r} has no GCT module to prune")
        figure = {c.label: c.curves for c in result.cells}
        how = "removed" if mode == "identity" else "removed (identity) or folded"
        fig = plot_prune(figure, order, f"{name}: GCT modules {how} by {order} vs random")
        part = order if mode == "identity" else f"{order}-{mode}"
        path = png_path(output, out, f"{name}-prune", part, False)
        result.where = save_figure(fig, path, store.client, log_run, f"prune/{part}.png")
    return result


def _export(path: Path, per_seed: bool, run_id: str, model: Any, cfg: Any, data: Any,
            order: str, mode: str, tolerance: float, curve: list[Any]) -> Exported:
    """Prune one run as far as ``tolerance`` allows on its own curve; write it plain."""
    from gct_ablate.analysis.fold import pruned_copy
    from gct_ablate.analysis.gates import gct_sites
    from gct_ablate.analysis.prune import max_removable, removal_order
    from gct_ablate.checkpoint import save_model
    from gct_ablate.models import count_parameters
    from gct_ablate.train import evaluate

    sites = gct_sites(model)
    k = max_removable(curve, tolerance)
    pruned, names = pruned_copy(model, sites, removal_order(model, data, order)[:k], mode)
    metrics = evaluate(pruned, data, 256)
    if per_seed:
        path = path.with_name(f"{path.stem}-seed{cfg.seed}{path.suffix}")
    params = count_parameters(pruned)[0]
    save_model(path, pruned, cfg, data, removed=names, info={
        "source_run": run_id, "mode": mode, "order": order, "tolerance": tolerance,
        "val_top1": metrics["val_top1"], "val_loss": metrics["val_loss"],
        "params_total": params})
    return Exported(path, run_id, cfg.seed, k, len(sites), count_parameters(model)[0], params,
                    metrics["val_top1"], metrics["val_loss"])
