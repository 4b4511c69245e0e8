"""gct-ablate: the command line. Thin commands; heavy imports inside them."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from gct_ablate._util import UsageError, mask_url, page_aligned_tensors, tune_malloc
from gct_ablate.factors import FACTORS, FactorError, parse_assignments, split_levels
from gct_ablate.spec import SpecError, StudySpec, TrialConfig

page_aligned_tensors()  # before any command imports torch; study workers inherit it

app = typer.Typer(
    name="gct-ablate",
    help="Ablation studies of the Gated Channel Transformation (GCT, CVPR 2020): "
    "grids over its unexplored axes, run through Optuna, tracked in MLflow, "
    "summarised with honest statistics.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_OUT = Path("gct-ablate-runs")


def one_line_errors(func: F) -> F:
    """Bad input becomes one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValueError as err:
            if not isinstance(err, _user_errors()):
                raise
            err_console.print(f"[bold red]Error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input (imported only when an error happens)."""
    from gct_ablate.data import DataError
    from gct_ablate.summary import SummaryError

    return (UsageError, SpecError, FactorError, DataError, SummaryError)


def _levels_help(name: str) -> str:
    f = FACTORS[name]
    allowed = ", ".join(f.choices) if f.choices else ", ".join(f.levels)
    return f"{f.help}. Levels: {allowed}. (paper/default: {f.reference})"


def _out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory {out}: {err.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"output directory {out} is not writable")
    return out


# --------------------------------------------------------------------------- options
Out = Annotated[Path, typer.Option("--out", help="Folder of the local stores (Optuna journal, "
                                   "MLflow SQLite, artifacts).")]
Storage = Annotated[str | None, typer.Option(
    "--storage", help="Optuna storage URL (e.g. postgresql://user@host/db) or a *.journal "
    "file. Default: OUT/optuna.journal.")]
TrackingUri = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI (e.g. http://host:5000). Default: "
    "$MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db.")]
Device = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N.")]
Threads = Annotated[int | None, typer.Option(
    min=1, help="torch threads per worker (default: cores / workers).")]
DataDir = Annotated[str | None, typer.Option(help="Dataset folder (cifar10/100, imagefolder).")]
Download = Annotated[bool, typer.Option(help="Allow downloading CIFAR into --data-dir.")]
Fmt = Annotated[str, typer.Option("--format", help="table, markdown, csv or json.")]


def _opt(name: str) -> Any:
    return typer.Option(f"--{name.replace('_', '-')}", help=_levels_help(name))


# --------------------------------------------------------------------------- factors
@app.command()
def factors() -> None:
    """List the ablation axes: name, default levels, the paper's reference, meaning."""
    from rich.table import Table

    table = Table(title="Ablation factors (use with --vary / --levels / --set)")
    for col in ("factor", "default levels", "reference", "allowed", "meaning"):
        table.add_column(col, overflow="fold")
    for f in FACTORS.values():
        allowed = ", ".join(f.choices) if f.choices else "see levels"
        if f.name == "p":
            allowed = "any number >= 1, inf, gap"
        elif f.name == "placement":
            allowed = "every-conv, block, after-block, none, stages=1+2, every=K"
        elif f.choices is None and f.group == "training":
            allowed = "number" if f.name not in ("beta_decay",) else "true, false"
        table.add_row(f.name, ", ".join(f.levels), f.reference, allowed, f.help)
    console.print(table)


# --------------------------------------------------------------------------- train
@app.command()
@one_line_errors
def train(
    attention: Annotated[str, _opt("attention")] = "gct",
    p: Annotated[str, _opt("p")] = "2",
    norm: Annotated[str, _opt("norm")] = "l2",
    activation: Annotated[str, _opt("activation")] = "tanh",
    remove: Annotated[str, _opt("remove")] = "none",
    init: Annotated[str, _opt("init")] = "zeros",
    alpha_init: Annotated[str, _opt("alpha_init")] = "ones",
    after_relu: Annotated[bool, typer.Option(help=FACTORS["after_relu"].help)] = False,
    placement: Annotated[str, _opt("placement")] = "every-conv",
    model: Annotated[str, _opt("model")] = "resnet20",
    dataset: Annotated[str, _opt("dataset")] = "digits",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak SGD learning rate (nesterov, momentum 0.9).")]
    = 0.1,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (not on beta).")] = 5e-4,
    beta_decay: Annotated[bool, typer.Option(help="Also decay beta (official: no).")] = False,
    schedule: Annotated[str, _opt("schedule")] = "cosine",
    warmup_epochs: Annotated[int, typer.Option(help="Linear warm-up epochs.")] = 1,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same numbers on CPU).")] = 0,
    device: Device = "auto",
    amp: Annotated[str, typer.Option(help="auto (bf16 on CUDA), bf16, fp16, none.")] = "auto",
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last", help="Default: on for CUDA.")] = None,
    threads: Threads = None,
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = False,
    recompute: Annotated[bool, typer.Option(
        help="Memory saver: GCT output recomputed in backward instead of stored.")] = False,
    data_dir: DataDir = None,
    download: Download = False,
) -> None:
    """Train one configuration and print its metrics (no Optuna, no MLflow)."""
    cfg = TrialConfig(
        attention=attention, p=p, norm=norm, activation=activation, remove=remove, init=init,
        alpha_init=alpha_init, after_relu=after_relu, placement=placement, model=model,
        dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, beta_decay=beta_decay, schedule=schedule,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, seed=seed, device=device,
        amp=amp, channels_last=channels_last, threads=threads, compile=compile,
        recompute=recompute, data_dir=data_dir, download=download,
    )
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from gct_ablate.train import train_eval

    tune_malloc()  # as the study workers do: no page faults on every large allocation
    columns = (TextColumn("[bold]epoch {task.completed}/{task.total}"), BarColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=cfg.epochs, info="loading data and model")

        def report(epoch: int, m: dict[str, float]) -> None:
            bar.update(task, completed=epoch, info=f"loss {m['train_loss']:.3f}  "
                       f"val top-1 {100 * m['val_top1']:.2f}%")

        try:
            metrics = train_eval(cfg, report)
        except ValueError as err:  # bad model/placement combination and the like
            raise UsageError(str(err)) from None
    table = Table(title=f"{cfg.model} + {cfg.attention} ({cfg.placement}) on {cfg.dataset}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("status", "val_top1", "val_top5", "val_loss", "train_loss", "epochs_done",
                "params_total", "params_attention", "n_attention_modules", "seconds", "device",
                "gct_impl"):
        value = metrics[key]
        if key in ("val_top1", "val_top5"):
            value = f"{100 * value:.2f} %"
        elif isinstance(value, float):
            value = f"{value:.4f}" if key != "seconds" else f"{value:.1f}"
        table.add_row(key, str(value))
    console.print(table)
    if metrics["status"] != "ok":
        err_console.print(f"[red]run {metrics['status']}[/]: the loss became NaN/inf")
        raise typer.Exit(1)


# --------------------------------------------------------------------------- run
def build_spec(
    study_file: Path | None, vary: str | None, levels: list[str], set_: list[str],
    seeds: int | None, study: str | None, metric: str | None, base: TrialConfig,
) -> StudySpec:
    """Study file (if any) overridden by the command line."""
    from gct_ablate.spec import load_study_file

    spec = load_study_file(study_file) if study_file else StudySpec()
    vary_names = tuple(split_levels(vary)) if vary else None
    lv: dict[str, tuple[str, ...]] = {}
    for text in levels:
        lv.update({k: tuple(v) for k, v in parse_assignments(text, "--levels").items()})
    fixed: dict[str, str] = {}
    for text in set_:
        for k, v in parse_assignments(text, "--set").items():
            if len(v) != 1:
                raise UsageError(f"--set {k} takes one value, got {','.join(v)}")
            fixed[k] = v[0]
    if vary_names:
        from gct_ablate.factors import get_factor

        both = {get_factor(n).name for n in vary_names} & {get_factor(k).name for k in fixed}
        if both:
            raise UsageError(f"conflicting options: {', '.join(sorted(both))} is both in "
                             "--vary and --set")
        lv_only = {get_factor(k).name for k in lv} - {get_factor(n).name for n in vary_names}
        if lv_only:
            raise UsageError(f"--levels for {', '.join(sorted(lv_only))}, which is not in --vary")
    return spec.with_overrides(vary=vary_names, levels=lv, fixed=fixed, seeds=seeds,
                               name=study, metric=metric, base=base)


def _preflight_data(spec: StudySpec) -> None:
    """Fail before any training when a dataset of the grid cannot be loaded."""
    from gct_ablate.data import load_dataset

    datasets = spec.levels.get("dataset") or (spec.config(()).dataset,)
    for name in datasets:
        load_dataset(name, data_dir=spec.base.data_dir, download=spec.base.download)


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
    out: Out = DEFAULT_OUT,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Local worker processes sharing the storage (default: min(cores, 4)).")]
    = None,
    pruner: Annotated[str, typer.Option(help="none (compare complete runs), median, hyperband.")]
    = "none",
    retry_failed: Annotated[bool, typer.Option(help="Re-queue failed cells.")] = False,
    save_models: Annotated[bool | None, typer.Option(
        "--save-models/--no-save-models",
        help="Log trained weights to MLflow (default: on below 5 M parameters).")] = None,
    device: Device = "auto",
    threads: Threads = None,
    data_dir: DataDir = None,
    download: Download = False,
    heartbeat: Annotated[int, typer.Option(
        min=1, help="RDB storages: heartbeat interval (s); a worker silent for 3x this "
        "is declared dead and its trial re-queued.")] = 10,
    fmt: Fmt = "table",
) -> None:
    """Run an ablation grid (every cell x seed once), track it in MLflow, print the summary.

    Re-running the same command resumes: finished cells are skipped.
    """
    base = TrialConfig(device=device, threads=threads, data_dir=data_dir, download=download,
                       save_model=save_models)
    spec = build_spec(study_file, vary, levels or [], set_ or [], seeds, study, metric, base)
    n_workers = workers or min(os.cpu_count() or 1, 4)
    _execute(spec, out=out, storage=storage, tracking_uri=tracking_uri, workers=n_workers,
             pruner=pruner, retry_failed=retry_failed, heartbeat=heartbeat, fmt=fmt)


def _execute(
    spec: StudySpec, *, out: Path, storage: str | None, tracking_uri: str | None, workers: int,
    pruner: str, retry_failed: bool, heartbeat: int, fmt: str,
) -> None:
    from gct_ablate.runner import run_workers
    from gct_ablate.study import WorkerOptions, make_pruner, open_storage, prepare_study
    from gct_ablate.study import storage_label as label
    from gct_ablate.tracking import Tracker, check_tracking, resolve_tracking_uri

    if fmt not in ("table", "markdown", "csv", "json"):
        raise UsageError(f"unknown format {fmt!r}; valid: table, markdown, csv, json")
    make_pruner(pruner)
    out = _out_dir(out)
    uri = resolve_tracking_uri(out, tracking_uri)
    opened = open_storage(storage, out, heartbeat_interval=heartbeat,
                          grace_period=3 * heartbeat)
    check_tracking(uri)
    _preflight_data(spec)
    tracker = Tracker(uri, artifact_root=out / "mlartifacts")
    prepared = prepare_study(spec, opened, tracker, retry_failed=retry_failed)
    name = spec.study_name
    total = len(spec.trials())
    console.print(
        f"[bold]{name}[/]: {len(spec.cells())} cells x {spec.seeds} seeds = {total} trials "
        f"({prepared.done} done, {prepared.enqueued} queued now), {workers} worker(s)\n"
        f"  Optuna storage: {label(storage, out)}\n  MLflow tracking: {uri}"
    )
    if prepared.failed_left:
        console.print(f"[yellow]{prepared.failed_left} failed trial(s) left as they are; "
                      "pass --retry-failed to run them again[/]")
    opts = WorkerOptions(study_name=name, storage=storage, out_dir=str(out), base=spec.base,
                         tracking_uri=tracking_uri, pruner=pruner,
                         heartbeat_interval=heartbeat, grace_period=3 * heartbeat)
    from gct_ablate.study import Interrupted

    try:
        run_workers(opts, workers, spec.config(()).epochs, console)
    except (KeyboardInterrupt, Interrupted):
        err_console.print("[yellow]Interrupted.[/] Running trials were re-queued; run the "
                          "same command again to resume.")
        raise typer.Exit(130) from None
    _finish(opened, name, tracker, fmt, out)
    console.print(f"\nOpen the runs in MLflow:  [bold]{_ui(uri)}[/]")
    console.print(f"Summary again later:     gct-ablate summary {name}"
                  + (f" --storage {mask_url(storage)}" if storage else f" --out {out}"))


def _ui(uri: str) -> str:
    from gct_ablate.tracking import ui_command

    return ui_command(uri)


def _finish(storage: Any, name: str, tracker: Any, fmt: str, out: Path) -> None:
    """Print the summary and log it (markdown, CSV, plot) on the study's parent run."""
    from gct_ablate import density
    from gct_ablate import summary as sm
    from gct_ablate.study import load_study

    results = sm.load_results(storage, name)
    summary = sm.summarize(results)
    sm.render(summary, fmt, console)
    figures = [sm.plot_levels(summary, out / f"{name}-levels.png")]
    if density.applies(results):
        if fmt == "table":
            console.print(density.density_table(results))
        figures.append(out / f"{name}-density.png")
        density.plot_density(results).savefig(figures[-1], dpi=110)
    study = load_study(storage, name)
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        tracker.log_summary(parent, sm.to_markdown(summary), sm.to_csv(summary), figures)
        if _all_done(study):
            tracker.finish_parent(parent)


def _all_done(study: Any) -> bool:
    from gct_ablate.runner import progress

    c = progress(study)["counts"]
    return c["waiting"] == 0 and c["running"] == 0


# --------------------------------------------------------------------------- worker
@app.command()
@one_line_errors
def worker(
    study: Annotated[str, typer.Argument(help="Name of the study to join.")],
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    out: Out = DEFAULT_OUT,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.")] = 1,
    device: Device = "auto",
    threads: Threads = None,
    data_dir: DataDir = None,
    download: Download = False,
    heartbeat: Annotated[int, typer.Option(min=1, help="Heartbeat interval (s), RDB only.")]
    = 10,
) -> None:
    """Join a study (e.g. on PostgreSQL) and pull cells until none are left."""
    from gct_ablate.runner import run_workers
    from gct_ablate.study import (
        Interrupted,
        WorkerOptions,
        load_study,
        open_storage,
        spec_from_attrs,
    )

    out = _out_dir(out)
    opened = open_storage(storage, out)
    found = load_study(opened, study)
    if "fingerprint" not in found.user_attrs:
        raise UsageError(f"study {study!r} was not made by gct-ablate (or is being created: "
                         "start workers once `run` has queued the grid)")
    from gct_ablate.tracking import check_tracking

    check_tracking(tracking_uri or found.user_attrs["tracking_uri"])
    base = TrialConfig(device=device, threads=threads, data_dir=data_dir, download=download)
    spec = spec_from_attrs(found.user_attrs, base)
    _preflight_data(spec)
    opts = WorkerOptions(study_name=study, storage=storage, out_dir=str(out), base=base,
                         tracking_uri=tracking_uri, heartbeat_interval=heartbeat,
                         grace_period=3 * heartbeat)
    try:
        run_workers(opts, workers, spec.config(()).epochs, console)
    except (KeyboardInterrupt, Interrupted):
        err_console.print("[yellow]Interrupted.[/] The running trial was re-queued.")
        raise typer.Exit(130) from None
    console.print("No cells left in the queue.")


# --------------------------------------------------------------------------- status
@app.command()
@one_line_errors
def status(
    study: Annotated[str, typer.Argument(help="Name of the study.")],
    storage: Storage = None,
    out: Out = DEFAULT_OUT,
) -> None:
    """Progress of a (distributed) study: cells done/running/failed/waiting, per worker host."""
    from rich.table import Table

    from gct_ablate.runner import progress
    from gct_ablate.study import load_study, open_storage

    found = load_study(open_storage(storage, out), study)
    info = progress(found)
    c = info["counts"]
    console.print(f"[bold]{study}[/]: {info['total']} cell x seed trials: "
                  f"[green]{c['complete']} done[/], [yellow]{c['running']} running[/], "
                  f"{c['waiting']} waiting, [red]{c['fail']} failed[/], "
                  f"[magenta]{c['pruned']} pruned[/]")
    hosts: dict[str, list[Any]] = {}
    for t in info["running"]:
        hosts.setdefault(str(t.user_attrs.get("host", "?")), []).append(t)
    if hosts:
        table = Table(title="running now")
        for col in ("host", "pid", "trial", "cell", "seed", "epoch", "started"):
            table.add_column(col)
        for host, trials in sorted(hosts.items()):
            for t in trials:
                table.add_row(host, str(t.user_attrs.get("pid", "?")), str(t.number),
                              t.user_attrs["cell"] or "-", str(t.user_attrs["seed"]),
                              str(len(t.intermediate_values)),
                              t.datetime_start.strftime("%H:%M:%S") if t.datetime_start else "")
        console.print(table)
    failed = [t for t in found.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    for t in failed[-5:]:
        console.print(f"[red]failed[/] trial {t.number} ({t.user_attrs.get('cell', '-')}, "
                      f"seed {t.user_attrs.get('seed', '-')}): "
                      f"{t.user_attrs.get('status_reason', 'unknown')}", highlight=False)


# --------------------------------------------------------------------------- summary
@app.command()
@one_line_errors
def summary(
    study: Annotated[str | None, typer.Argument(
        help="Name of the study (default: the only study in the storage).")] = None,
    storage: Storage = None,
    out: Out = DEFAULT_OUT,
    fmt: Fmt = "table",
) -> None:
    """Summarise a study from stored results alone: per cell, per factor, verdicts."""
    from gct_ablate import summary as sm
    from gct_ablate.study import open_storage, study_names

    if fmt not in ("table", "markdown", "csv", "json"):
        raise UsageError(f"unknown format {fmt!r}; valid: table, markdown, csv, json")
    if storage is None and not (out / "optuna.journal").exists():
        raise UsageError(f"no study storage in {out}; pass --out DIR or --storage URL")
    opened = open_storage(storage, out)
    if study is None:
        names = study_names(opened)
        if len(names) != 1:
            raise UsageError(f"name a study; this storage has: {', '.join(names) or 'none'}")
        study = names[0]
    sm.render(sm.summarize(sm.load_results(opened, study)), fmt, console)


def _register_extras() -> None:
    try:
        from gct_ablate.cli_analysis import register
    except ImportError:  # pragma: no cover - analysis commands not installed
        return
    register(app)


_register_extras()


def main() -> None:  # pragma: no cover
    app(prog_name="gct-ablate")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
