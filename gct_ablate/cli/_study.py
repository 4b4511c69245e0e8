"""Study commands: ``run`` a grid, join it as a ``worker``, its ``status``, its ``summary``."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gct_ablate._util import DEFAULT_OUT, mask_url
from gct_ablate.cli._app import app, check_format, console, err_console, one_line_errors
from gct_ablate.cli._options import (
    STORAGE_ENV,
    AllowMany,
    CheckpointDir,
    CheckpointEvery,
    DataDir,
    Device,
    Download,
    Fmt,
    Gpus,
    Heartbeat,
    KeepCheckpoints,
    Out,
    Storage,
    Threads,
    TrackingUri,
)
from gct_ablate.spec import TrialConfig
from gct_ablate.store import keys
from gct_ablate.study_file import build_spec

Margin = Annotated[float | None, typer.Option(
    help="Smallest difference that matters, in points of the metric "
    "(percentage points for accuracies; default 0.5; val_loss has none): cells within it "
    "are 'equivalent'; also the study-file key `margin`.")]


@app.command()
@one_line_errors
def run(
    study_file: Annotated[Path | None, typer.Argument(
        help="A TOML study file (see studies/). Command-line options override it.")] = None,
    vary: Annotated[str | None, typer.Option(
        help="Factors to cross, comma-separated (e.g. p,activation). See `gct-ablate factors`.")]
    = None,
    levels: Annotated[list[str] | None, typer.Option(
        help="Override levels, e.g. --levels p=1,2,inf (repeatable).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Hold factors fixed, e.g. --set epochs=30,model=resnet56 (repeatable).")]
    = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Replicates per cell (default: 3).")]
    = None,
    study: Annotated[str | None, typer.Option(
        help="Study name (default: derived from what varies, e.g. vary-p-activation).")] = None,
    metric: Annotated[str | None, typer.Option(
        help="val_top1 (default), val_top5 or val_loss.")] = None,
    margin: Margin = None,
    until_decided: Annotated[bool, typer.Option(
        help="Adaptive seeds: after the first --seeds, add --seed-batch seeds to the "
        "reference and every inconclusive cell per look, until every cell is decided or "
        "--max-seeds is reached (error rate held over the planned looks).")] = False,
    max_seeds: Annotated[int, typer.Option(
        min=1, help="--until-decided: seeds per cell at most.")] = 12,
    seed_batch: Annotated[int, typer.Option(
        min=1, help="--until-decided: seeds added per look.")] = 3,
    design: Annotated[str | None, typer.Option(
        help="Which cells: full (default: every combination), ofat (one factor at a time "
        "against the reference: one table), gsd=R (screening, about 1/R of the grid, main "
        "effects only).")] = None,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Run a study above the cost limits without asking.")] = False,
    ask_above_trials: Annotated[int, typer.Option(
        min=0, help="Ask before running more than this many trials.")] = 500,
    ask_above_hours: Annotated[float, typer.Option(
        min=0.0, help="Ask before a study estimated to take longer (hours, on this machine "
        "with its workers).")] = 2.0,
    out: Out = DEFAULT_OUT,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Local worker processes sharing the storage (default: min(cores, 4)).")]
    = None,
    allow_many_workers: AllowMany = False,
    pruner: Annotated[str, typer.Option(help="none (compare complete runs), median, hyperband.")]
    = "none",
    retry_failed: Annotated[bool, typer.Option(help="Re-queue failed cells.")] = False,
    save_models: Annotated[bool | None, typer.Option(
        "--save-models/--no-save-models",
        help="Log trained weights to MLflow (default: on below 5 M parameters).")] = None,
    device: Device = "auto",
    gpus: Gpus = None,
    threads: Threads = None,
    data_dir: DataDir = None,
    download: Download = False,
    heartbeat: Heartbeat = 10,
    checkpoint_every: CheckpointEvery = "auto",
    checkpoint_dir: CheckpointDir = None,
    keep_checkpoints: KeepCheckpoints = False,
    fmt: Fmt = "table",
) -> None:
    """Run an ablation grid (every cell x seed once), track it in MLflow, print the summary.

    Re-running the same command resumes: finished cells are skipped. Before queueing, the
    cost is estimated; above the limits it asks (without a terminal: refuses unless --yes).
    """
    base = TrialConfig(device=device, threads=threads, data_dir=data_dir, download=download,
                       save_model=save_models, checkpoint_every=checkpoint_every,
                       checkpoint_dir=checkpoint_dir, keep_checkpoints=keep_checkpoints)
    spec = build_spec(study_file, vary, levels or [], set_ or [], seeds, study, metric, base,
                      margin, design=design)
    if until_decided:
        spec = dataclasses.replace(spec, max_seeds=max(max_seeds, spec.seeds),
                                   seed_batch=seed_batch)
    check_format(fmt)
    from gct_ablate.cost import CostLimits
    from gct_ablate.steps import execute, finish, plan
    from gct_ablate.tracking import ui_command
    from gct_ablate.worker import Interrupted

    planned = plan(spec, out=out, storage=storage, tracking_uri=tracking_uri, workers=workers,
                   pruner=pruner, retry_failed=retry_failed, heartbeat=heartbeat,
                   limits=None if yes else CostLimits(ask_above_trials, ask_above_hours),
                   gpus=gpus, allow_many_workers=allow_many_workers)
    if planned.needs_approval:
        _confirm_cost(planned.estimate)
    _print_plan(planned)
    try:
        execute(planned, console=console, approve_cost=True)
        result = finish(planned)
    except (KeyboardInterrupt, Interrupted):
        err_console.print("[yellow]Interrupted.[/] Running trials were re-queued; run the "
                          "same command again to resume.")
        raise typer.Exit(130) from None
    _print_summary(result, fmt)
    if result.schedule:
        _print_undecided(result)
    ui = ui_command(planned.tracking_uri, result.tracking.get(keys.EXPERIMENT_ID))
    console.print(f"\nOpen the runs in MLflow:  [bold]{ui}[/]", soft_wrap=True)
    console.print(f"Summary again later:     gct-ablate summary {spec.study_name}"
                  + _storage_hint(storage, out), highlight=False, soft_wrap=True)
    from gct_ablate.analysis.report import report_file

    console.print(f"Report (HTML, Markdown): {report_file(out, spec.study_name)}",
                  highlight=False, soft_wrap=True)


def _storage_hint(storage: str | None, out: Path) -> str:
    if storage and storage == os.environ.get(STORAGE_ENV):
        return f" (storage from ${STORAGE_ENV})"
    return f" --storage {mask_url(storage)}" if storage else f" --out {out}"


def _confirm_cost(estimate: Any) -> bool:
    """Above the limits: ask on a terminal; without one, refuse with one line."""
    from gct_ablate.errors import UsageError

    if not sys.stdin.isatty():
        raise UsageError(f"{estimate.line()}; not started, nothing was queued: pass --yes to "
                         f"run it anyway, or {estimate.ofat_line()}")
    console.print(f"[yellow]Large study:[/] {estimate.line()}", highlight=False, soft_wrap=True)
    console.print(f"Smaller: {estimate.ofat_line()}", highlight=False, soft_wrap=True)
    if typer.confirm("Queue and run it?", default=False):
        return True
    console.print("Not started; nothing was queued.")
    raise typer.Exit(1)


def _print_plan(plan: Any) -> None:
    console.print(
        f"[bold]{plan.name}[/]: {plan.cells} cells x {plan.seeds} seeds = {plan.total} trials "
        f"({plan.done} done, {plan.enqueued} queued now), {plan.workers} worker(s)"
        f"{_placement(plan.devices)}\n"
        f"  Optuna storage: {plan.storage}\n  MLflow tracking: {mask_url(plan.tracking_uri)}",
        soft_wrap=True)  # stores whole, to copy and paste
    if plan.estimate is not None and plan.estimate.trials:
        console.print(f"  Estimate: {plan.estimate.line()}", highlight=False, soft_wrap=True)
    if plan.failed_left:
        console.print(f"[yellow]{plan.failed_left} failed trial(s) left as they are; "
                      "pass --retry-failed to run them again[/]", soft_wrap=True)


def _placement(devices: tuple[str, ...]) -> str:
    """' on cuda:0 (2), cuda:1 (1)': how many workers each device runs."""
    if set(devices) <= {"auto"}:  # no GPU: the device each trial resolves to is recorded
        return ""
    counts = {d: devices.count(d) for d in dict.fromkeys(devices)}
    return " on " + ", ".join(f"{d} ({n})" if len(counts) > 1 else d for d, n in counts.items())


def _print_undecided(summary: Any) -> None:
    """After --until-decided: the cells that stayed inconclusive, and what they would need."""
    left = [c for c in summary.cells if not c.is_reference and c.verdict.startswith(
        "inconclusive")]
    if not left:
        console.print("[green]Every cell is decided.[/]")
    for c in left:
        need = (f"needs about {c.seeds_needed} seeds per cell to detect the margin"
                if c.seeds_needed else "needs more seeds (no estimate: too little data)")
        console.print(f"[yellow]{c.cell}[/]: inconclusive after {c.n} seeds; {need}",
                      highlight=False)


def _print_summary(result: Any, fmt: str) -> None:
    from gct_ablate import summary as sm
    from gct_ablate.analysis import density

    sm.render(result, fmt, console)
    if fmt == "table" and density.applies(result):
        console.print(density.density_table(result))


@app.command()
@one_line_errors
def worker(
    study: Annotated[str, typer.Argument(help="Name of the study to join.")],
    storage: Storage = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow tracking URI; default (and the only one accepted): the "
        "one stored with the study.")] = None,
    out: Out = DEFAULT_OUT,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.")] = 1,
    allow_many_workers: AllowMany = False,
    device: Device = "auto",
    gpus: Gpus = None,
    threads: Threads = None,
    data_dir: DataDir = None,
    download: Download = False,
    heartbeat: Heartbeat = 10,
    checkpoint_every: CheckpointEvery = "auto",
    checkpoint_dir: CheckpointDir = None,
    keep_checkpoints: KeepCheckpoints = False,
    wait: Annotated[float, typer.Option(
        min=0, help="Seconds to wait for the study to be created by `gct-ablate run` "
        "(the tasks of a job array may start in any order).")] = 300,
) -> None:
    """Join a study (e.g. on PostgreSQL) and pull cells until none are left.

    The tracking URI is the one stored with the study.
    """
    from gct_ablate.study import join_study
    from gct_ablate.worker import Interrupted

    base = TrialConfig(device=device, threads=threads, data_dir=data_dir, download=download,
                       checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir,
                       keep_checkpoints=keep_checkpoints)
    try:
        failed = join_study(study, out=out, storage=storage, tracking_uri=tracking_uri,
                            workers=workers, base=base, heartbeat=heartbeat, wait=wait,
                            console=console, gpus=gpus, allow_many_workers=allow_many_workers)
    except (KeyboardInterrupt, Interrupted):
        err_console.print("[yellow]Interrupted.[/] The running trial was re-queued.")
        raise typer.Exit(130) from None
    if failed:
        console.print(f"[red]{len(failed)} worker process(es) stopped with an error "
                      f"(exit {', '.join(map(str, failed))}); their trials were re-queued[/]")
    console.print("No cells left in the queue.")


@app.command()
@one_line_errors
def status(
    study: Annotated[str, typer.Argument(help="Name of the study.")],
    storage: Storage = None,
    out: Out = DEFAULT_OUT,
) -> None:
    """Progress of a (distributed) study: cells done/running/failed/waiting, and each worker
    (host, process, device)."""
    from rich.table import Table

    from gct_ablate.study import study_progress

    info = study_progress(study, out=out, storage=storage)
    c = info["counts"]
    console.print(f"[bold]{study}[/]: {info['total']} cell x seed trials: "
                  f"[green]{c['complete']} done[/], [yellow]{c['running']} running[/], "
                  f"{c['waiting']} waiting, [red]{c['fail']} failed[/], "
                  f"[magenta]{c['pruned']} pruned[/]")
    hosts: dict[str, list[Any]] = {}
    for t in info["running"]:
        hosts.setdefault(t.host or "?", []).append(t)
    if hosts:
        table = Table(title="running now")
        for col in ("host", "pid", "device", "trial", "cell", "seed", "epoch", "started"):
            table.add_column(col)
        for host, trials in sorted(hosts.items()):
            for t in trials:
                table.add_row(host, t.pid or "?", t.device or "?", str(t.number), t.cell or "-",
                              str(t.seed), str(len(t.curve)),
                              t.started.strftime("%H:%M:%S") if t.started else "")
        console.print(table)
    _print_workers(info["workers"])
    for t in info["failed"][-5:]:
        console.print(f"[red]failed[/] trial {t.number} ({t.cell or '-'}, seed "
                      f"{'-' if t.seed is None else t.seed}): {t.reason or 'unknown'}",
                      highlight=False)


def _print_workers(workers: list[Any], shown: int = 16) -> None:
    """The workers that took trials: host, pid, device, trials finished, trial now."""
    from rich.table import Table

    if not workers:
        return
    table = Table(title="workers")
    for col in ("host", "pid", "device", "finished", "running"):
        table.add_column(col)
    for w in workers[:shown]:
        table.add_row(w.host, w.pid, w.device, str(w.done),
                      "-" if w.running is None else f"trial {w.running}")
    console.print(table)
    if len(workers) > shown:
        console.print(f"... and {len(workers) - shown} more worker(s)")


@app.command()
@one_line_errors
def summary(
    study: Annotated[str | None, typer.Argument(
        help="Name of the study (default: the only study in the storage).")] = None,
    storage: Storage = None,
    out: Out = DEFAULT_OUT,
    margin: Annotated[float | None, typer.Option(
        help="Smallest difference that matters, in points of the "
        "metric (percentage points for accuracies); overrides the study's for this "
        "analysis (default: the study's, else 0.5 for accuracies).")] = None,
    fmt: Fmt = "table",
) -> None:
    """Summarise a study from stored results alone: per cell, per factor, verdicts."""
    from gct_ablate.study import load_summary

    check_format(fmt)
    _print_summary(load_summary(study, out=out, storage=storage, margin=margin), fmt)
