"""Option types shared by several commands (``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gct_ablate.factors import FACTORS
from gct_ablate.spec import OUTPUT_FORMATS


def levels_help(name: str) -> str:
    f = FACTORS[name]
    allowed = ", ".join(f.choices) if f.choices else ", ".join(f.levels)
    return f"{f.help}. Levels: {allowed}. (paper/default: {f.reference})"


def factor_option(name: str) -> Any:
    return typer.Option(f"--{name.replace('_', '-')}", help=levels_help(name))


Out = Annotated[Path, typer.Option("--out", help="Folder of the local stores (Optuna journal, "
                                   "MLflow SQLite, artifacts).")]
STORAGE_ENV = "GCT_ABLATE_STORAGE"
Storage = Annotated[str | None, typer.Option(
    "--storage", envvar=STORAGE_ENV, show_envvar=True,
    help="Optuna storage URL (e.g. postgresql://user@host/db; keep passwords out of it: "
    "~/.pgpass or PGPASSWORD) or a *.journal file. Default: OUT/optuna.journal.")]
TrackingUri = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI (e.g. http://host:5000). Default: "
    "$MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db.")]
AllowMany = Annotated[bool, typer.Option(
    "--allow-many-workers", help="Allow more than 4 worker processes per core.")]
Device = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N.")]
Gpus = Annotated[str | None, typer.Option(
    "--gpus", help="GPUs for the workers, e.g. 0,2 (indices among those CUDA_VISIBLE_DEVICES "
    "shows); workers are placed round-robin, several per GPU when there are more workers. "
    "Default: every visible GPU (none: the CPU).")]
Threads = Annotated[int | None, typer.Option(
    min=1, help="torch threads per worker (default: cores / workers).")]
DataDir = Annotated[str | None, typer.Option(
    help="Dataset folder (mnist, fashion-mnist, cifar10/100, imagefolder); see docs/data.md.")]
Download = Annotated[bool, typer.Option(
    help="Allow downloading MNIST, Fashion-MNIST or CIFAR into --data-dir.")]
Fmt = Annotated[str, typer.Option("--format", help=", ".join(OUTPUT_FORMATS) + ".")]
Heartbeat = Annotated[int, typer.Option(
    min=1, help="RDB storages: heartbeat interval (s); a worker silent for 3x this is "
    "declared dead and its trial re-queued.")]
Output = Annotated[Path | None, typer.Option(
    "--output", help="PNG path (default: OUT/NAME-WHAT.png; with several cells the cell is "
    "added to the file name).")]
CellOpt = Annotated[str | None, typer.Option(
    "--cell", help="Only this cell, e.g. 'p=2 activation=tanh' (default: every cell).")]
CheckpointEvery = Annotated[str, typer.Option(
    "--checkpoint-every", help="Save each trial's training state every N epochs (0: never), "
    "or auto: as often as keeps saving under 2 % of a trial. A re-queued trial resumes from "
    "it.")]
CheckpointDir = Annotated[str | None, typer.Option(
    "--checkpoint-dir", help="Folder of the trial states, readable by every node of the study "
    "(default: OUT/checkpoints); see docs/distributed.md.")]
KeepCheckpoints = Annotated[bool, typer.Option(
    "--keep-checkpoints", help="Keep a trial's state when it completes (default: removed).")]
