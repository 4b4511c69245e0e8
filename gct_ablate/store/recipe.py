"""A study's recipe: every factor of every cell's TrialConfig, defaults resolved, stored at
creation, so a resumed study trains what it started with whatever the defaults are now.

The recipe holds each field that decides what is trained (every factor: model, data,
epochs, optimiser, GCT variant, ...). The other TrialConfig fields say how and where a
machine runs it (device, threads, data folder, precision) and come from each worker.

A worker trains the stored recipe. It refuses, in one line, a recipe it cannot reproduce:
a field this version does not know, or a value it would read differently. A factor added
after the study was stored takes this version's default (new factors default to the
behaviour before they existed). A study stored before recipes were kept gets the recipe of
the version that first resumes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gct_ablate.errors import FactorError, UsageError
from gct_ablate.factors import FACTORS, parse_level
from gct_ablate.spec import StudySpec, cell_id
from gct_ablate.store.keys import RECIPE, TOOL_VERSION

Recipe = dict[str, dict[str, str]]  # cell id -> {factor: canonical level}


def recipe_of(spec: StudySpec) -> Recipe:
    """The full recipe of every cell of ``spec`` as this version resolves it."""
    return {cell_id(c): spec.config(c).factor_levels() for c in spec.cells()}


def recipe_attrs(spec: StudySpec) -> dict[str, Any]:
    """The study attributes that keep the recipe (written once, at creation)."""
    from gct_ablate import __version__

    return {RECIPE: recipe_of(spec), TOOL_VERSION: __version__}


def with_recipe(spec: StudySpec, attrs: Mapping[str, Any]) -> StudySpec:
    """``spec`` whose cells resolve to the stored recipe (``attrs``: the study's user
    attributes); ``spec`` itself when none is stored. A one-line UsageError when this
    version cannot train the stored recipe exactly."""
    stored: Recipe | None = attrs.get(RECIPE)
    if not stored:
        return spec
    from gct_ablate import __version__

    name, by = spec.study_name, attrs.get(TOOL_VERSION)
    use = (f"run its workers with gct-ablate {by}" if by else
           "run its workers with the gct-ablate version that started it")
    first = next(iter(stored.values()))
    unknown = sorted(set().union(*map(set, stored.values())) - set(FACTORS))
    if unknown:
        raise UsageError(f"study {name!r} has {unknown[0]!r} in its stored recipe, which "
                         f"gct-ablate {__version__} does not know; {use}")
    try:
        base = spec.base.replace(**{k: parse_level(k, v) for k, v in first.items()})
    except FactorError as err:
        raise UsageError(f"study {name!r}: gct-ablate {__version__} cannot read its stored "
                         f"recipe ({err}); {use}") from None
    resolved = dataclasses.replace(spec, base=base)
    mine = recipe_of(resolved)
    for cell, fields in stored.items():
        have = mine.get(cell, {})
        for key, value in fields.items():
            if have.get(key) != value:
                raise UsageError(
                    f"study {name!r}: gct-ablate {__version__} would train cell "
                    f"{cell or '(single)'!r} with {key}={have.get(key)}, not the stored "
                    f"{key}={value}; {use}")
    return resolved
