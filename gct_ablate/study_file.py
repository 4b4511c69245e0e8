"""Studies from text: a TOML study file, and the command line's ``--vary/--levels/--set``.

A study file (see ``studies/``)::

    name = "p_norm"                 # optional; default derived from what varies
    question = "Does p matter?"     # free text
    vary = ["p"]
    seeds = 3
    metric = "val_top1"
    margin = 0.5                    # smallest difference that matters, in points of the
                                    # metric (percentage points for accuracies)
    design = "full"                 # or "ofat", "gsd=4" (see gct_ablate.designs)
    max_seeds = 12                  # with seed_batch: adaptive seeds (run --until-decided)
    seed_batch = 3
    [levels]                        # optional overrides of the default levels
    p = [1, 2, 3, "inf", "gap"]
    [set]                           # factors held fixed
    epochs = 15

Every problem is a one-line :class:`~gct_ablate.errors.SpecError` naming the file and key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gct_ablate.errors import SpecError
from gct_ablate.factors import get_factor, parse_assignments, split_levels
from gct_ablate.spec import StudySpec, TrialConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


_FILE_KEYS = {"name", "question", "vary", "levels", "set", "seeds", "metric", "margin",
              "max_seeds", "seed_batch", "design"}


def load_study_file(path: str | Path) -> StudySpec:
    """Read and validate a TOML study file; errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: study file not found") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at "
                        f"offset {err.start}); save the study file as UTF-8") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: TOML syntax error: {err}") from None
    except RecursionError:  # arrays or tables nested hundreds of levels deep
        raise SpecError(f"{path}: nested too deeply to read (arrays or tables inside each "
                        "other hundreds of times); a study file needs two levels") from None
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise SpecError(
            f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_FILE_KEYS))}"
        )

    def want(key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = data.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise SpecError(f"{path}: key {key!r} must be {what}")
        return value

    vary = want("vary", list, "a list of factor names") or []
    levels = want("levels", dict, "a table of factor = [levels]") or {}
    fixed = want("set", dict, "a table of factor = value") or {}
    seeds = want("seeds", int, "an integer")
    name = want("name", str, "a string")
    question = want("question", str, "a string") or ""
    metric = want("metric", str, "a string") or "val_top1"
    margin = want("margin", (int, float), "a number (points of the metric)")
    if isinstance(margin, bool):
        raise SpecError(f"{path}: key 'margin' must be a number (points of the metric)")
    max_seeds = want("max_seeds", int, "an integer (adaptive seeds: with seed_batch)")
    seed_batch = want("seed_batch", int, "an integer (adaptive seeds: with max_seeds)")
    design = want("design", str, "a string: full, ofat or gsd=R") or "full"
    for k, v in levels.items():
        if not isinstance(v, list):
            raise SpecError(f"{path}: levels.{k} must be a list")
    for k, v in fixed.items():
        if isinstance(v, (list, dict)):
            raise SpecError(f"{path}: set.{k} must be a single value")
    try:
        return StudySpec(
            vary=tuple(str(v) for v in vary),
            levels={k: tuple(v) for k, v in levels.items()},
            fixed=dict(fixed),
            seeds=3 if seeds is None else seeds,
            name=name,
            question=question,
            metric=metric,
            margin=None if margin is None else float(margin),
            max_seeds=max_seeds, seed_batch=seed_batch,
            design=design,
        )
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def build_spec(
    study_file: Path | None, vary: str | None, levels: list[str], set_: list[str],
    seeds: int | None, study: str | None, metric: str | None, base: TrialConfig | None = None,
    margin: float | None = None,
    design: str | None = None,
) -> StudySpec:
    """A study file (if any) overridden by command-line text: ``vary`` 'p,activation',
    ``levels`` ['p=1,2,inf'], ``set_`` ['epochs=30,model=resnet56'], ``design`` 'ofat'
    (see ``gct-ablate run``)."""
    spec = load_study_file(study_file) if study_file else StudySpec()
    vary_names = tuple(split_levels(vary)) if vary else None
    lv: dict[str, tuple[str, ...]] = {}
    for text in levels:
        for k, v in parse_assignments(text, "--levels").items():
            if k in lv:  # refused, not merged: a second --levels used to replace the first
                raise SpecError(f"--levels {k} given twice ({','.join(lv[k])} and "
                                f"{','.join(v)}); give each factor's levels once, e.g. "
                                f"--levels {k}={','.join((*lv[k], *v))}")
            lv[k] = tuple(v)
    fixed: dict[str, str] = {}
    for text in set_:
        for k, v in parse_assignments(text, "--set").items():
            if len(v) != 1:
                raise SpecError(f"--set {k} takes one value, got {','.join(v)}")
            fixed[k] = v[0]
    if vary_names:
        both = {get_factor(n).name for n in vary_names} & {get_factor(k).name for k in fixed}
        if both:
            raise SpecError(f"conflicting options: {', '.join(sorted(both))} is both in "
                             "--vary and --set")
        lv_only = {get_factor(k).name for k in lv} - {get_factor(n).name for n in vary_names}
        if lv_only:
            raise SpecError(f"--levels for {', '.join(sorted(lv_only))}, which is not in --vary")
    return spec.with_overrides(vary=vary_names, levels=lv, fixed=fixed, seeds=seeds,
                               name=study, metric=metric, base=base, margin=margin,
                               design=design)
