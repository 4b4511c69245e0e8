"""One report of a study: a self-contained HTML file and its Markdown twin.

``write_report(study, out=..., storage=...)`` reads the stored study (Optuna trials with
their per-epoch values, the trials' gate statistics and the parent run's prune figures from
MLflow), and writes

- ``OUT/STUDY-report.html``: every image embedded as a base64 PNG, CSS inline, no link to
  anything outside the file (it opens offline, attached to an e-mail, years later);
- ``OUT/STUDY-report.md``: the same text, its images as PNG files in the folder
  ``OUT/STUDY-report_files/`` beside it (relative links).

It retrains nothing and computes no pruning: what is not stored is left out, and the report
says so. ``gct-ablate run`` writes it at the end and logs it on the parent run (``report/``).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gct_ablate._util import DEFAULT_OUT
from gct_ablate.analysis.report_content import Report, ReportFigure, ReportPaths, png
from gct_ablate.errors import UsageError
from gct_ablate.stats import StudyResults, Summary, summarize
from gct_ablate.store import keys

__all__ = ["Report", "ReportFigure", "ReportPaths", "build_report", "log_report",
           "report_file", "save_report", "verdict_table", "write_report"]


# ----------------------------------------------------------------------------- artifacts
def _gates(results: StudyResults, store: Any) -> dict[str, list[list[dict[str, Any]]]]:
    """cell -> per-seed gate statistics of its COMPLETE trials (cells without GCT left out)."""
    from gct_ablate.artifacts import completed_by_cell, gate_stats_by_cell

    try:
        groups = completed_by_cell(results)
    except UsageError:
        return {}
    return {cell: stats for cell, stats in gate_stats_by_cell(results, store, groups).items()
            if stats}


def _prune_pngs(store: Any, parent: str) -> list[tuple[str, bytes]]:
    """The prune figures logged on the parent run (``prune/*.png``), name and bytes."""
    out = []
    for item in store.client.list_artifacts(parent, "prune"):
        if item.is_dir or not item.path.endswith(".png"):
            continue
        local = store.download(parent, item.path)
        if local is not None:
            out.append((Path(item.path).stem, local.read_bytes()))
    return out


def _stored_figures(results: StudyResults, summary: Summary, missing: list[str]
                    ) -> list[ReportFigure]:
    """Gates and prune figures from the MLflow store (empty, with a reason, without one)."""
    from gct_ablate.analysis.gate_plots import plot_gates, pool_stats
    from gct_ablate.analysis.report_figures import cell_label, gates_heatmap
    from gct_ablate.artifacts import RunStore

    uri = results.tracking.get(keys.TRACKING_URI)
    if not uri:
        missing.append("gates and prune figures: the study has no MLflow tracking URI")
        return []
    figures = []
    try:
        with RunStore(uri) as store:
            gates = _gates(results, store)
            parent = results.tracking.get(keys.PARENT_RUN_ID)
            prunes = _prune_pngs(store, parent) if parent else []
    except Exception as err:  # an unreachable or moved store must not lose the report
        missing.append(f"gates and prune figures: MLflow store {uri} not readable "
                       f"({type(err).__name__})")
        return []
    if gates:
        pooled = {cell: pool_stats(per_seed) for cell, per_seed in gates.items()}
        grid = gates_heatmap(summary, pooled)
        if grid is not None:
            figures.append(ReportFigure(
                "gates-cells", "GCT modules of every cell", "A row per cell, a column per "
                "GCT module: gamma and how far the gate is from the identity (grey: a module "
                "the cell does not have).", png(grid)))
        ref = summary.reference_cell if summary.reference_cell in gates else next(iter(gates))
        figures.append(ReportFigure(
            "gates", f"Gates of {cell_label(ref)}", "Paper-style gate figure, the seeds "
            "pooled: gamma per module (> 0 channels compete, < 0 cooperate), the gate on "
            "validation data and its near-identity channels.",
            png(plot_gates(gates[ref], f"{summary.study_name}: {cell_label(ref)}"))))
    else:
        missing.append("gates: no trial logged gate statistics (no GCT module, or no "
                       "completed trial)")
    for name, data in prunes:
        figures.append(ReportFigure(f"prune-{name}", f"Prune curve ({name})",
                                    "As logged on the parent run by `gct-ablate prune`.", data))
    if not prunes:
        missing.append("prune curve: none logged (run `gct-ablate prune STUDY`)")
    return figures


# ----------------------------------------------------------------------------- building
def build_report(results: StudyResults, summary: Summary, *, artifacts: bool = True) -> Report:
    """The report's content: the summary, the recipe and every figure that can be drawn from
    what is stored. ``artifacts=False`` leaves the MLflow store alone (no gates, no prune)."""
    from gct_ablate.analysis import density
    from gct_ablate.analysis import report_figures as rf
    from gct_ablate.analysis.recipe import recipe
    from gct_ablate.summary import levels_figure

    s = summary
    figures: list[ReportFigure] = []
    if any(not c.is_reference for c in s.cells):
        figures.append(ReportFigure(
            "forest", "Each cell against the reference", f"Δ {s.metric} of each cell minus "
            f"the reference with its {s.confidence:.0%} CI (paired by seed where seeds are "
            "shared); filled: decided, hollow: not; the shaded band is ±margin. A CI inside "
            "the band means equivalent, one clear of 0 better or worse.",
            png(rf.forest_figure(s))))
    missing: list[str] = []
    if (fig := rf.interaction_figure(s)) is not None:
        figures.append(ReportFigure("interaction", "Interaction", "Cell means against the "
                                    "first factor, a line per level of the second.", png(fig)))
    if s.factors:
        figures.append(ReportFigure("levels", "Levels", "Mean of the cell means per level, "
                                    "95% CI; a panel per factor.", png(levels_figure(s))))
    if (fig := rf.curves_figure(s, results.trials)) is not None:
        figures.append(ReportFigure("curves", "Learning curves", "The validation metric after "
                                    "each epoch (what the trials reported).", png(fig)))
    else:
        missing.append("learning curves: no trial reported per-epoch values")
    if density.applies(s):
        figures.append(ReportFigure("density", "Placement density", "The metric against the "
                                    "number of GCT modules and their parameters.",
                                    png(density.plot_density(s))))
    if artifacts:
        figures += _stored_figures(results, s, missing)
    secs = [float(t.metrics["seconds"]) for t in results.trials
            if isinstance(t.metrics.get("seconds"), (int, float))
            and math.isfinite(t.metrics["seconds"])]
    return Report(s, recipe(s), figures, len(secs), math.fsum(secs), missing,
                  datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def report_file(out: Path, study: str) -> Path:
    """Where ``run`` and ``report`` put a study's report: ``OUT/STUDY-report.html`` (the
    name made safe at write time: a stored name never leads outside ``out``)."""
    from gct_ablate.analysis._figures import slug

    return Path(out) / slug(f"{study}-report.html")


WRITTEN = ".gct-ablate-report"  # in FILE_files/: the files the last report wrote there


def _check_ours(paths: ReportPaths, own: bool) -> list[str]:
    """The images an earlier report of this tool wrote (to replace); a one-line UsageError
    when ``paths`` would overwrite or delete files it did not write (``own``: the tool's own
    default place in --out, where earlier versions left no list)."""
    listed = paths.images / WRITTEN
    if listed.is_file():
        names = listed.read_text(encoding="utf-8").split()
        return [n for n in names if n.endswith(".png") and "/" not in n]
    if own:
        return [p.name for p in paths.images.glob("*.png")]
    theirs = [p for p in (paths.html, paths.markdown) if p.exists()]
    if paths.images.is_dir() and any(paths.images.iterdir()):
        theirs.append(paths.images)
    if theirs:
        raise UsageError(f"{theirs[0]} exists and was not written by gct-ablate; nothing was "
                         "written: pass another --output (or move it aside)")
    return []


def report_paths(html: Path) -> ReportPaths:
    html = html if html.suffix else html.with_suffix(".html")
    return ReportPaths(html, html.with_suffix(".md"), html.with_name(f"{html.stem}_files"))


def save_report(report: Report, html: Path, own: bool = True) -> ReportPaths:
    """Write the HTML file, the Markdown twin beside it and the Markdown's images; only
    files an earlier report wrote are replaced (``own``: see :func:`_check_ours`)."""
    from gct_ablate.analysis.report_text import to_html, to_markdown

    paths = report_paths(Path(html))
    earlier = _check_ours(paths, own)
    try:
        paths.images.mkdir(parents=True, exist_ok=True)
        for name in earlier:  # an earlier report's figures
            (paths.images / name).unlink(missing_ok=True)
        names = [f"{f.name}.png" for f in report.figures]
        (paths.images / WRITTEN).write_text("\n".join(names) + "\n", encoding="utf-8")
        for f, name in zip(report.figures, names, strict=True):
            (paths.images / name).write_bytes(f.png)
        paths.html.write_text(to_html(report), encoding="utf-8")
        paths.markdown.write_text(to_markdown(report, paths.images.name), encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot write the report at {paths.html}: "
                         f"{err.strerror or err}") from None
    return paths


def verdict_table(summary: Summary) -> dict[str, list[Any]]:
    """The verdicts as columns (differences in points for accuracies): an MLflow table."""
    s = summary
    k = s.scale

    def pts(x: float | None) -> float | None:
        return None if x is None else k * x

    cells = s.cells
    return {
        "cell": [c.cell or "(single cell)" for c in cells],
        "n": [c.n for c in cells],
        "mean": [pts(c.mean) for c in cells],
        "test": [c.test or "reference" for c in cells],
        "delta": [pts(c.delta) for c in cells],
        "delta_ci_low": [pts(c.ci_simultaneous[0]) if c.ci_simultaneous else None
                         for c in cells],  # simultaneous, at the family's level
        "delta_ci_high": [pts(c.ci_simultaneous[1]) if c.ci_simultaneous else None
                          for c in cells],
        "p_adjusted": [c.p_adjusted for c in cells],
        "p_equivalence_adjusted": [c.p_equivalence_adjusted for c in cells],
        "detects": [pts(c.mdd) for c in cells],
        "seeds_needed": [c.seeds_needed for c in cells],
        "verdict": [s.verdict_text(c) for c in cells],
    }


def log_report(tracker: Any, parent: str, report: Report, paths: ReportPaths) -> None:
    """Log the report on the parent run: ``report/`` gets the HTML, the Markdown with its
    images, the forest plot as ``report/forest.png`` and the verdict table
    (``report/verdicts.json``, an MLflow table)."""
    tracker.log_report(parent, paths.files, verdict_table(report.summary))
    if report.figure("forest") is not None:
        tracker.client.log_artifact(parent, str(paths.images / "forest.png"), "report")


def write_report(study: str | None = None, *, out: str | Path = DEFAULT_OUT,
                 storage: str | None = None, margin: float | None = None,
                 output: Path | None = None, log: bool = False) -> ReportPaths:
    """Write the report of a stored study (``study`` may be omitted when the storage holds
    one) to ``output`` (default ``OUT/STUDY-report.html``) with its Markdown twin beside it.
    ``margin``: points of the metric (default the study's). ``log``: also log it on the
    study's MLflow parent run."""
    from gct_ablate.storage import open_named_study
    from gct_ablate.summary import load_results

    out = Path(out)
    opened, study = open_named_study(out, storage, study)
    results = load_results(opened, study)
    parent = results.tracking.get(keys.PARENT_RUN_ID)
    if log and not (parent and results.tracking.get(keys.TRACKING_URI)):
        raise UsageError(f"study {study!r} has no MLflow parent run to log the report on")
    summary = summarize(results, margin=margin)
    report = build_report(results, summary)
    paths = save_report(report, output or report_file(out, study), own=output is None)
    if log and parent:
        from gct_ablate.tracking import Tracker, existing_store

        log_report(Tracker(existing_store(results.tracking[keys.TRACKING_URI])), parent, report,
                   paths)
        paths = ReportPaths(paths.html, paths.markdown, paths.images, parent)
    return paths
