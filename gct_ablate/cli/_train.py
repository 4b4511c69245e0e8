"""Commands on single runs and the factor registry: ``factors``, ``train``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from gct_ablate._util import tune_malloc
from gct_ablate.cli._app import app, console, err_console, one_line_errors
from gct_ablate.cli._config_options import config_parameters, with_parameters
from gct_ablate.errors import UsageError
from gct_ablate.factors import FACTORS
from gct_ablate.spec import TrialConfig


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
        elif f.name in ("train_size", "val_size", "image_size"):
            allowed = f"positive integer, {f.reference}"
        elif f.name == "init_from":
            allowed = "none, PATH, RUN_ID, torchvision:WEIGHTS"
        elif f.choices is None and f.group == "training":
            allowed = "number" if f.name not in ("beta_decay",) else "true, false"
        table.add_row(f.name, ", ".join(f.levels), f.reference, allowed, f.help)
    console.print(table)


_TRAIN_ONLY = [  # the options of `train` that are not TrialConfig fields
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=None)
    for name, annotation in (
        ("stages", Annotated[str | None, typer.Option(
            help="With --init-from: gct:E1,joint:E2 trains E1 epochs with only the attention "
            "parameters trainable (at --gct-lr), then E2 epochs jointly (default: all joint).")]),
        ("save", Annotated[Path | None, typer.Option(
            help="Write the trained state dict to PATH and its config to PATH.json (read back "
            "by --init-from and `gct-ablate evaluate`).")]),
        ("tracking_uri", Annotated[str | None, typer.Option(
            help="Where an MLflow run id of --init-from is looked up. Default: "
            "$MLFLOW_TRACKING_URI, else the store in ./gct-ablate-runs.")]),
    )
]
_TRAIN_OPTIONS = config_parameters(
    # from --init-from, --stages and --save; a single run keeps no per-epoch state
    skip=("training", "gct_epochs", "save_model", "checkpoint_every", "checkpoint_dir",
          "keep_checkpoints"),
    own={"epochs": (Annotated[int | None, typer.Option(
             min=1, help=f"Training epochs (default {TrialConfig.epochs}; with --stages, their "
             "sum).")], None),
         "init_from": (Annotated[str | None, typer.Option(
             help="Fine-tune: start from this backbone trained with --attention none (a file "
             "of --save, an MLflow run id, a torchvision ResNet state dict file, or "
             "torchvision:WEIGHTS from the local torch hub cache); attention is added at "
             "identity.")], None)},
) + _TRAIN_ONLY


def train(*, stages: str | None = None, save: Path | None = None,
          tracking_uri: str | None = None, **fields: Any) -> None:
    """Train one configuration and print its metrics (no Optuna, no MLflow).

    With --init-from it fine-tunes a trained backbone with attention added, printing the
    validation accuracy before training (step 0) and after each stage.
    """
    epochs, init_from = fields.pop("epochs"), fields.pop("init_from")
    training, gct_epochs = "scratch", 1
    if stages is not None:
        from gct_ablate.finetune import parse_stages

        if init_from is None:
            raise UsageError("--stages needs --init-from (the backbone to fine-tune)")
        if epochs is not None:
            raise UsageError("--stages sets the epochs (gct:E1,joint:E2 is E1 + E2); leave "
                             "--epochs out")
        gct_epochs, joint_epochs = parse_stages(stages)
        epochs = gct_epochs + joint_epochs
        training = "finetune-staged" if gct_epochs else "finetune-joint"
        gct_epochs = gct_epochs or 1
    elif init_from is not None:
        training = "finetune-joint"
    cfg = TrialConfig(**fields, epochs=TrialConfig.epochs if epochs is None else epochs,
                      training=training, init_from=init_from or "none", gct_epochs=gct_epochs)
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

        def on_stage(name: str, epoch: int, m: dict[str, float]) -> None:
            what = (f"step 0 ({cfg.init_from} with {cfg.attention} added at identity)"
                    if name == "init" else f"after the {name} stage (epoch {epoch})")
            console.print(f"{what}: val top-1 {100 * m['val_top1']:.2f} %, "
                          f"val loss {m['val_loss']:.4f}", highlight=False, soft_wrap=True)

        def on_end(model: Any, data: Any, dev: Any) -> None:
            if save is not None:
                from gct_ablate.checkpoint import save_model

                save_model(save, model, cfg, data)

        try:
            metrics = train_eval(cfg, report, on_end=on_end, on_stage=on_stage,
                                 tracking_uri=tracking_uri)
        except ValueError as err:  # bad model/placement combination and the like
            raise UsageError(str(err)) from None
    title = f"{cfg.model} + {cfg.attention} ({cfg.placement}) on {cfg.dataset}"
    table = Table(title=title if cfg.training == "scratch" else f"{title}, {cfg.training}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("status", "val_top1_step0", "val_top1_after_gct", "val_top1", "val_top5",
                "val_loss", "train_loss", "epochs_done", "params_total", "params_attention",
                "n_attention_modules", "seconds", "device", "gct_impl"):
        if key not in metrics:
            continue
        value = metrics[key]
        if key.startswith(("val_top1", "val_top5")):
            value = f"{100 * value:.2f} %"
        elif isinstance(value, float):
            value = f"{value:.4f}" if key != "seconds" else f"{value:.1f}"
        table.add_row(key, str(value))
    console.print(table)
    if save is not None and metrics["status"] == "ok":
        console.print(f"saved: {save} (weights), {save}.json (config)", highlight=False,
                      soft_wrap=True)
    if metrics["status"] != "ok":
        err_console.print(f"[red]run {metrics['status']}[/]: the loss became NaN/inf")
        raise typer.Exit(1)


with_parameters(train, _TRAIN_OPTIONS)
app.command()(one_line_errors(train))
