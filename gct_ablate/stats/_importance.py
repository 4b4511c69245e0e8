"""Optuna's parameter importance of each factor: a relative, secondary figure.

Importances are normalised to sum to 1 even when no factor matters, so they rank factors
and never test them (the ANOVA does); computed on an in-memory copy of the complete trials.
"""

from __future__ import annotations

import warnings

from gct_ablate.stats._records import TrialRecord

PED_ANOVA_MIN_TRIALS = 50  # PED-ANOVA wants >= 5 trials in its top 10% quantile
MIN_IMPORTANCE_TRIALS = 4


def _levels(cell: str) -> dict[str, str]:
    """{factor: level} of a cell id ('' -> {}); malformed parts are ignored."""
    return dict(part.split("=", 1) for part in cell.split() if "=" in part)


def importance(vary: list[str], levels: dict[str, list[str]], runs: list[TrialRecord],
                maximize: bool) -> tuple[dict[str, float | None], str]:
    """Optuna importance of each factor on an in-memory copy of the complete trials."""
    if not vary:
        return {}, "n/a: no factor varies"
    none: dict[str, float | None] = dict.fromkeys(vary)
    if len(vary) == 1:
        return none, "n/a: only one factor varies (see the ANOVA)"
    params = [r.params or _levels(r.cell) for r in runs]
    usable = [(r.value, ps) for r, ps in zip(runs, params, strict=True)
              if r.value is not None and all(n in ps for n in vary)]
    if len(usable) < MIN_IMPORTANCE_TRIALS or len({v for v, _ in usable}) < 2:
        return none, f"n/a: needs >= {MIN_IMPORTANCE_TRIALS} complete runs that differ"
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    if len(usable) >= PED_ANOVA_MIN_TRIALS:
        method, evaluator = "PED-ANOVA", PedAnovaImportanceEvaluator()
    else:  # PED-ANOVA's top-10% quantile would hold fewer than 5 trials
        method, evaluator = "fANOVA", FanovaImportanceEvaluator(seed=0)
    dists = {n: CategoricalDistribution(list(dict.fromkeys(
        levels[n] + [ps[n] for _, ps in usable]))) for n in vary}
    verbosity = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize" if maximize else "minimize")
            study.add_trials([optuna.trial.create_trial(
                value=v, params={n: ps[n] for n in vary}, distributions=dists)
                for v, ps in usable])
            raw = get_param_importances(study, evaluator=evaluator, params=vary,
                                        normalize=False)
    except Exception as err:  # importance is a bonus: never fail the summary for it
        first = (str(err).strip().splitlines() or [""])[0]
        return none, f"n/a: {method} failed ({type(err).__name__}: {first})"
    finally:
        optuna.logging.set_verbosity(verbosity)
    total = sum(raw.values())
    note = f"{method} on {len(usable)} complete runs"
    if not total > 0:  # Optuna would split 1.0 equally, which reads as an effect
        return dict.fromkeys(vary, 0.0), note + " (no factor shows an effect)"
    return {n: raw.get(n, 0.0) / total for n in vary}, note
