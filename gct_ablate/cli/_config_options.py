"""Command-line options made from TrialConfig's fields: one declaration, the dataclass.

Every field becomes ``--field-name`` with the field's default. Factors take their help from
the registry (:data:`gct_ablate.factors.FACTORS`); the fields that say how and where a run
happens take it from :data:`RUN_HELP`. A field added to TrialConfig becomes an option.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import typer

from gct_ablate.cli._options import factor_option
from gct_ablate.factors import FACTORS
from gct_ablate.spec import TrialConfig

RUN_HELP = {
    "seed": "Random seed (same seed, same numbers on CPU).",
    "data_dir": "Dataset folder (mnist, fashion-mnist, cifar10/100, imagefolder); see "
                "docs/data.md.",
    "download": "Allow downloading MNIST, Fashion-MNIST or CIFAR into --data-dir.",
    "stream": "imagefolder: stream from disk through DataLoader workers (default: when the "
              "images would take more than --memory-budget-gb in memory).",
    "memory_budget_gb": "imagefolder: the in-memory budget above which it streams.",
    "loader_workers": "Streaming: DataLoader worker processes (default: cores, at most 8).",
    "device": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N.",
    "amp": "auto (bf16 on CUDA), bf16, fp16, none.",
    "channels_last": "Default: on for CUDA.",
    "threads": "torch threads (default: torch's own).",
    "compile": "torch.compile the model.",
    "recompute": "Memory saver: GCT output recomputed in backward instead of stored.",
    "save_model": "Keep the trained weights (default: below 5 M parameters).",
}


def _option_type(name: str, hint: Any, default: Any) -> Any:
    """The type Typer parses: flags for booleans, numbers as such, other factors as text
    (TrialConfig reads them, refusing bad ones in one line)."""
    if isinstance(default, bool) or hint == bool | None:
        return bool | None if default is None else bool
    if name in FACTORS:
        return type(default) if isinstance(default, int | float) else str
    if str in typing.get_args(hint):  # int | str and the like: TrialConfig parses the text
        return str | None if type(None) in typing.get_args(hint) else str
    return hint


def _option(name: str, kind: Any) -> Any:
    if name in FACTORS and kind is str:
        return factor_option(name)
    flag = name.replace("_", "-")
    decls = (f"--{flag}/--no-{flag}",) if kind == bool | None else ()
    return typer.Option(*decls, help=FACTORS[name].help if name in FACTORS
                        else RUN_HELP.get(name, name.replace("_", " ")))


def config_parameters(skip: Iterable[str] = (), own: Mapping[str, tuple[Any, Any]] = {}
                      ) -> list[inspect.Parameter]:
    """One keyword parameter per TrialConfig field, in field order: ``own`` gives a field
    its (annotation, default) instead; ``skip`` leaves fields out."""
    hints = typing.get_type_hints(TrialConfig)
    params = []
    for f in dataclasses.fields(TrialConfig):
        if f.name in skip:
            continue
        if f.name in own:
            annotation, default = own[f.name]
        else:
            kind = _option_type(f.name, hints[f.name], f.default)
            annotation, default = Annotated[kind, _option(f.name, kind)], f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=annotation, default=default))
    return params


def with_parameters(func: Callable[..., Any], params: list[inspect.Parameter]) -> None:
    """Give ``func`` (which takes ``**kwargs``) the signature Typer reads its options from."""
    func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    func.__annotations__ = {p.name: p.annotation for p in params}
