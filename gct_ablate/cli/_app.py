"""The Typer app, the shared consoles and the one-line error wrapper of every command."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from gct_ablate._util import page_aligned_tensors
from gct_ablate.errors import UsageError

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


def one_line_errors(func: F) -> F:
    """Bad input (a :class:`UsageError`) becomes one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            err_console.print(f"[bold red]Error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def check_format(fmt: str) -> str:
    from gct_ablate.spec import OUTPUT_FORMATS

    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"unknown format {fmt!r}; valid: {', '.join(OUTPUT_FORMATS)}")
    return fmt
