"""Analysis commands of trained studies: ``gates``, ``prune`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gct_ablate._util import DEFAULT_OUT
from gct_ablate.cli._app import app, console, one_line_errors
from gct_ablate.cli._options import CellOpt, Device, Out, Output, Storage, TrackingUri


@app.command()
@one_line_errors
def gates(
    study: Annotated[str, typer.Argument(help="Name of the study.")],
    cell: CellOpt = None,
    storage: Storage = None,
    out: Out = DEFAULT_OUT,
    output: Output = None,
) -> None:
    """Gate analysis of a study, per cell with its seeds pooled.

    Per GCT module: gamma (> 0 channels compete, < 0 they cooperate), the gate on
    validation data and its near-identity channels; a table and a PNG, logged to MLflow.
    """
    from gct_ablate.analysis.gates import gates_table
    from gct_ablate.analysis.runs import gate_analysis

    for found in gate_analysis(study, cell=cell, storage=storage, out=out, output=output):
        label = found.cell or "(single cell)"
        if not found.stats:
            console.print(f"{label}: no gate statistics (no GCT module in this cell)")
            continue
        console.print(gates_table(found.pooled, f"{study}: {label} "
                                  f"({len(found.stats)} seeds pooled)"))
        console.print(found.where, highlight=False)


@app.command()
@one_line_errors
def prune(
    target: Annotated[str, typer.Argument(
        metavar="RUN_ID_OR_STUDY", help="A study name, or an MLflow run id (32 hex).")],
    order: Annotated[str, typer.Option(
        help="Redundancy score, lowest removed first: gate (mean |gate-1| on validation "
        "data) or gamma (mean |gamma|).")] = "gate",
    tolerance: Annotated[float, typer.Option(
        min=0.0, help="Accuracy loss allowed, in top-1 percentage points.")] = 0.5,
    finetune: Annotated[int, typer.Option(
        min=0, help="Epochs of fine-tuning after each removal (0: none).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the random-order control.")] = 0,
    cell: CellOpt = None,
    storage: Storage = None,
    out: Out = DEFAULT_OUT,
    tracking_uri: TrackingUri = None,
    device: Device = "auto",
    output: Output = None,
) -> None:
    """Post-hoc GCT pruning: how many modules can go without losing accuracy?

    Removes GCT modules (most redundant first, a random order as the control) at 0, 10,
    ..., 100 % and re-evaluates without retraining; per study, seeds are averaged.
    """
    from gct_ablate.analysis.prune import prune_table
    from gct_ablate.analysis.runs import prune_analysis

    result = prune_analysis(target, order=order, tolerance=tolerance, finetune=finetune,
                            seed=seed, cell=cell, storage=storage, out=out,
                            tracking_uri=tracking_uri, device=device, output=output)
    tuned = f", fine-tuned {finetune} epoch(s)" if finetune else ", no retraining"
    for label in result.skipped:
        console.print(f"{label or '(single cell)'}: no GCT module to prune")
    for c in result.cells:
        console.print(prune_table(c.ranked, c.random, order, f"{result.name}: "
                                  f"{c.label or '(single cell)'} ({c.seeds} seed(s){tuned})"))
        console.print(f"[bold]{c.label or result.name}[/]: {c.removable} of {c.modules} modules "
                      f"can go for less than {tolerance:g} points (order: {order})",
                      highlight=False)
    console.print(result.where, highlight=False)


@app.command()
@one_line_errors
def report(
    study: Annotated[str | None, typer.Argument(
        help="Name of the study (default: the only study in the storage).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="HTML file to write (default: OUT/STUDY-report.html); the "
        "Markdown twin goes beside it (.md) with its images in FILE_files/.")] = None,
    storage: Storage = None,
    out: Out = DEFAULT_OUT,
    margin: Annotated[float | None, typer.Option(
        help="Smallest difference that matters, in points of the metric; overrides the "
        "study's for this report (default: the study's, else 0.5 for accuracies).")] = None,
    log: Annotated[bool, typer.Option(
        "--log/--no-log", help="Also log the report on the study's MLflow parent run "
        "(report/), replacing the one `run` logged.")] = False,
) -> None:
    """One self-contained HTML report of a study, and its Markdown twin.

    The question and the recipe, a forest plot of each cell against the
    reference, the verdicts, the ANOVA, learning curves, the gates, any logged
    prune curve, the cost. The HTML embeds its images and opens offline;
    nothing is retrained. `run` writes it at the end too.
    """
    from gct_ablate.analysis.report import write_report

    paths = write_report(study, out=out, storage=storage, margin=margin, output=output, log=log)
    shown = {"highlight": False, "soft_wrap": True}  # paths stay whole, to copy and paste
    console.print(f"report: {paths.html}", **shown)
    console.print(f"markdown: {paths.markdown} (images in {paths.images}/)", **shown)
    if paths.logged_to:
        console.print(f"logged to MLflow run {paths.logged_to} under report/", **shown)
