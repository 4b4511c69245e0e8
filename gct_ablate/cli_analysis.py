"""Analysis commands of trained studies: ``gates`` and ``prune`` (``register(app)`` adds them).

No ``from __future__ import annotations`` here: Typer reads the commands' annotations at
run time and the option types come from :mod:`gct_ablate.cli` inside :func:`register`.
"""

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from gct_ablate._util import UsageError

Output = Annotated[Path | None, typer.Option(
    "--output", help="PNG path (default: OUT/NAME-WHAT.png; with several cells the cell is "
    "added to the file name).")]
Cell = Annotated[str | None, typer.Option(
    "--cell", help="Only this cell, e.g. 'p=2 activation=tanh' (default: every cell).")]


def slug(text: str) -> str:
    """File-name form of a cell id: 'p=2 activation=tanh' -> 'p=2_activation=tanh'."""
    return re.sub(r"[^A-Za-z0-9=+.-]+", "_", text).strip("_") or "single"


def png_path(output: Path | None, out: Path, stem: str, part: str, several: bool) -> Path:
    """Where one figure goes: --output (with ``part`` added when there are several)."""
    if output is None:
        path = out / f"{stem}-{part}.png"
    elif several:
        path = output.with_name(f"{output.stem}-{part}{output.suffix or '.png'}")
    else:
        path = output
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create folder {path.parent}: {err.strerror}") from None
    return path


def _save(fig: Any, path: Path, store: Any = None, run_id: str | None = None,
          artifact: str = "") -> str:
    """Write the PNG and, given a run, log it there too; returns where it went."""
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    where = f"figure: {path}"
    if run_id:
        store.client.log_figure(run_id, fig, artifact)
        where += f"; logged to MLflow run {run_id} as {artifact}"
    return where


# ------------------------------------------------------------------------------- gates
def gates_command(study: str, cell: str | None, storage: str | None, out: Path,
                  output: Path | None, console: Any) -> list[Path]:
    """Pool each cell's per-seed gate statistics: table, PNG, figure on the parent run."""
    from gct_ablate.artifacts import RunStore, completed_by_cell, load_study_results, tracking_uri
    from gct_ablate.gates import gates_table, plot_gates, pool_stats

    results = load_study_results(study, storage, out)
    groups = completed_by_cell(results, cell)
    parent = results.tracking.get("mlflow_parent_run_id")
    written = []
    with RunStore(tracking_uri(results)) as store:
        for name, trials in groups.items():
            stats = [s for t in trials if (s := store.gates(t.mlflow_run_id))]
            label = name or "(single cell)"
            if not stats:
                console.print(f"{label}: no gate statistics (no GCT module in this cell)")
                continue
            title = f"{study}: {label}"
            console.print(gates_table(pool_stats(stats), f"{title} ({len(stats)} seeds pooled)"))
            fig = plot_gates(stats, title)
            path = png_path(output, out, f"{study}-gates", slug(name), len(groups) > 1)
            where = _save(fig, path, store, parent, f"gates/{slug(name)}.png")
            console.print(where, highlight=False)
            written.append(path)
    if not written:
        raise UsageError(f"study {study!r} has no gate statistics to plot")
    return written


# ------------------------------------------------------------------------------- prune
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


def prune_command(target: str, *, order: str, tolerance: float, finetune: int, seed: int,
                  cell: str | None, storage: str | None, out: Path, tracking_uri: str | None,
                  device: str, output: Path | None, console: Any) -> dict[str, tuple[int, int]]:
    """Prune curves of one run or of every cell of a study; {label: (removable, modules)}."""
    from gct_ablate.artifacts import RunStore
    from gct_ablate.gates import gct_sites
    from gct_ablate.prune import (
        max_removable,
        mean_curve,
        plot_prune,
        prune_curve,
        prune_table,
    )
    from gct_ablate.train import resolve_device

    if order not in ("gate", "gamma"):
        raise UsageError(f"unknown order {order!r}; valid: gate, gamma")
    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as err:  # unknown or unavailable device
        raise UsageError(str(err)) from None
    name, uri, log_run, groups = _targets(target, cell, storage, out, tracking_uri)
    curves, result = {}, {}
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
                console.print(f"{label or '(single cell)'}: no GCT module to prune")
                continue
            a, b = mean_curve(ranked), mean_curve(random)
            tuned = f", fine-tuned {finetune} epoch(s)" if finetune else ", no retraining"
            console.print(prune_table(a, b, order, f"{name}: {label or '(single cell)'} "
                                      f"({len(ranked)} seed(s){tuned})"))
            k, total = max_removable(a, tolerance), a[-1].n_removed
            console.print(f"[bold]{label or name}[/]: {k} of {total} modules can go for less "
                          f"than {tolerance:g} points (order: {order})", highlight=False)
            curves[label], result[label] = (a, b), (k, total)
        if not curves:
            raise UsageError(f"{target!r} has no GCT module to prune")
        fig = plot_prune(curves, order, f"{name}: GCT modules removed by {order} vs random")
        path = png_path(output, out, f"{name}-prune", order, False)
        where = _save(fig, path, store, log_run, f"prune/{order}.png")
    console.print(where, highlight=False)
    return result


# ------------------------------------------------------------------------------- register
def register(app: typer.Typer) -> None:
    """Add the ``gates`` and ``prune`` commands to the tool's Typer app."""
    from gct_ablate.cli import (
        DEFAULT_OUT,
        Device,
        Out,
        Storage,
        TrackingUri,
        console,
        one_line_errors,
    )

    @app.command()
    @one_line_errors
    def gates(
        study: Annotated[str, typer.Argument(help="Name of the study.")],
        cell: Cell = None,
        storage: Storage = None,
        out: Out = DEFAULT_OUT,
        output: Output = None,
    ) -> None:
        """Gate analysis of a study, per cell with its seeds pooled.

        Per GCT module: gamma (> 0 channels compete, < 0 they cooperate), the gate on
        validation data and its near-identity channels; a table and a PNG, logged to MLflow.
        """
        gates_command(study, cell, storage, out, output, console)

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
        cell: Cell = None,
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
        prune_command(target, order=order, tolerance=tolerance, finetune=finetune, seed=seed,
                      cell=cell, storage=storage, out=out, tracking_uri=tracking_uri,
                      device=device, output=output, console=console)
