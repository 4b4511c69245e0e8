"""Analysis commands of trained studies: ``gates``, ``prune``, ``report``, and ``evaluate``
of a saved network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gct_ablate._util import DEFAULT_OUT
from gct_ablate.cli._app import app, console, one_line_errors
from gct_ablate.cli._options import (
    CellOpt,
    DataDir,
    Device,
    Out,
    Output,
    Storage,
    TrackingUri,
)
from gct_ablate.errors import UsageError


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
    Per cell, the paper's claim (gamma < 0 in shallow layers, > 0 in deep ones) is tested:
    Spearman rho of module mean gamma with depth and the mean gamma of the first and last
    third, each with a 95 % t interval over seeds: reproduced, opposite or not detected.
    """
    from gct_ablate.analysis.gates import gates_table
    from gct_ablate.analysis.runs import gate_analysis
    from gct_ablate.analysis.trend import trend_text

    for found in gate_analysis(study, cell=cell, storage=storage, out=out, output=output):
        label = found.cell or "(single cell)"
        if not found.stats:
            console.print(f"{label}: no gate statistics (no GCT module in this cell)")
            continue
        console.print(gates_table(found.pooled, f"{study}: {label} "
                                  f"({len(found.stats)} seeds pooled)"))
        console.print(f"[bold]{label}[/]: {trend_text(found.trend)}", highlight=False)
        console.print(found.where, highlight=False, soft_wrap=True)  # paths whole


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
    mode: Annotated[str, typer.Option(
        help="How a module goes: identity (nn.Identity in its place) or fold (its constant "
        "part g(beta) folded into the next conv, or the BN before it: exact where gamma is "
        "0); fold also shows the identity curves.")] = "identity",
    export: Annotated[Path | None, typer.Option(
        help="Write the cell's trained networks pruned as far as --tolerance allows (by "
        "--order and --mode) as plain networks: PATH (state dict) and PATH.json; one file per "
        "seed (PATH-seedN). Read back with `gct-ablate evaluate PATH` or "
        "gct_ablate.checkpoint.load_model(PATH).")] = None,
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
    from gct_ablate.analysis.prune import prune_modes_table, prune_table
    from gct_ablate.analysis.runs import prune_analysis

    result = prune_analysis(target, order=order, tolerance=tolerance, finetune=finetune,
                            seed=seed, cell=cell, storage=storage, out=out,
                            tracking_uri=tracking_uri, device=device, output=output,
                            mode=mode, export=export)
    tuned = f", fine-tuned {finetune} epoch(s)" if finetune else ", no retraining"
    for label in result.skipped:
        console.print(f"{label or '(single cell)'}: no GCT module to prune")
    for c in result.cells:
        title = f"{result.name}: {c.label or '(single cell)'} ({c.seeds} seed(s){tuned})"
        console.print(prune_table(c.ranked, c.random, order, title) if mode == "identity"
                      else prune_modes_table(c.curves, order, title))
        if c.unfoldable:
            console.print(f"{len(c.unfoldable)} module(s) have no conv after them nor BN before "
                          f"them; fold removes them as identity: {', '.join(c.unfoldable)}",
                          highlight=False)
        console.print(f"[bold]{c.label or result.name}[/]: {c.removable} of {c.modules} modules "
                      f"can go for less than {tolerance:g} points (order: {order}, mode: "
                      f"{mode})", highlight=False)
    console.print(result.where, highlight=False, soft_wrap=True)  # paths whole
    for e in result.exports:
        console.print(f"exported {e.path} (+ .json): {e.removed} of {e.modules} GCT modules "
                      f"removed ({mode}), {e.params_total:,} parameters (trained: "
                      f"{e.params_before:,}), val top-1 {100 * e.val_top1:.2f} %, val loss "
                      f"{e.val_loss:.4f}", highlight=False, soft_wrap=True)


@app.command()
@one_line_errors
def evaluate(
    path: Annotated[Path, typer.Argument(help="A network saved by `train --save` or "
                                               "`prune --export` (PATH and PATH.json).")],
    device: Device = "auto",
    data_dir: DataDir = None,
) -> None:
    """Evaluate a saved network on its dataset's validation split: top-1, loss, parameters."""
    from gct_ablate.checkpoint import load_model
    from gct_ablate.data import load_dataset
    from gct_ablate.models import count_parameters
    from gct_ablate.train import evaluate as run_eval
    from gct_ablate.train import resolve_device

    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    saved = load_model(path, dev)
    cfg = saved.cfg
    options = {**cfg.data_options(), "download": False}
    if data_dir:
        options["data_dir"] = data_dir
    data = load_dataset(cfg.dataset, **options).to(dev)
    metrics = run_eval(saved.model, data, 256)
    total, attn = count_parameters(saved.model)
    removed = len(saved.info.get("removed", []))
    console.print(f"{path}: {cfg.model} + {cfg.attention} ({cfg.placement}) on {cfg.dataset}"
                  f"{f', {removed} GCT modules removed' if removed else ''}: val top-1 "
                  f"{100 * metrics['val_top1']:.2f} %, val loss {metrics['val_loss']:.4f}, "
                  f"{total:,} parameters ({attn:,} in attention)", highlight=False,
                  soft_wrap=True)


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
