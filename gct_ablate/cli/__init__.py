"""The command line: a thin Typer layer over the Python API (``gct-ablate --help``).

Commands parse their options, call one function of the library and print its result;
heavy imports (torch, MLflow, Optuna) happen inside the commands, so ``--help`` is instant.
The command modules register themselves on ``app``, in the order ``--help`` lists them.
"""

from gct_ablate.cli._app import app

# isort: split
from gct_ablate.cli import _train  # noqa: F401

# isort: split
from gct_ablate.cli import _study  # noqa: F401

# isort: split
from gct_ablate.cli import _analysis  # noqa: F401

__all__ = ["app"]
