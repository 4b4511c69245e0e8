"""The Typer app, the shared consoles and the one-line error wrapper of every command."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer._click import exceptions as click_errors  # Typer's own copy of click's errors
from typer.core import TyperGroup

from gct_ablate.errors import UsageError
from gct_ablate.masking import mask


class OneLineGroup(TyperGroup):
    """Click's and Typer's own usage errors (an option out of its range, a missing argument)
    as one line on stderr, exit code 2, instead of a usage box."""

    def main(self, args: Sequence[str] | None = None, *a: Any, **kw: Any) -> Any:
        standalone = kw.pop("standalone_mode", True)
        try:
            rv = super().main(args, *a, standalone_mode=False, **kw)
        except click_errors.NoArgsIsHelpError as err:
            typer.echo(err.ctx.get_help() if err.ctx else str(err))
            rv = 2
        except click_errors.ClickException as err:
            if not standalone:
                raise
            Console(stderr=True).print(f"[bold red]Error:[/] {mask(err.format_message())}",
                                       highlight=False, soft_wrap=True, markup=True)
            rv = err.exit_code
        except typer.Abort:
            if not standalone:
                raise
            rv = 1
        if standalone:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    name="gct-ablate",
    cls=OneLineGroup,
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
            say(str(err))
            raise typer.Exit(2) from None
        except OSError as err:  # a full disk or a quota: one line; the trial was re-queued
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            where = f" ({err.filename})" if err.filename else ""
            say(f"{err.strerror or err}{where}; free some space, then run the same command "
                "again to resume (the running trials were re-queued)")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def say(message: str) -> None:
    """One error line on stderr, passwords masked."""
    err_console.print(f"[bold red]Error:[/] {mask(message)}", highlight=False, soft_wrap=True,
                      markup=True)


def check_format(fmt: str) -> str:
    from gct_ablate.spec import OUTPUT_FORMATS

    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"unknown format {fmt!r}; valid: {', '.join(OUTPUT_FORMATS)}")
    return fmt
