"""The factorial analysis: a linear model of the metric on the varied factors, seed as a block.

``value ~ C(f1) * C(f2) * ... + C(seed)`` fitted with statsmodels ``ols``, type-II ANOVA
(``anova_lm(typ=2)``): per main effect, interaction and the seed block its F, p and partial
eta^2 = SS_effect / (SS_effect + SS_residual). Interactions enter only for a replicated full
grid (every cell >= 2 runs; else the model would leave no residual); the seed block only
when seeds are shared across cells. Per factor, each level against the reference level: the
model's contrast averaged over the other factors' levels, with its CI; the factor is
"negligible" when every such contrast has its 1 - 2 alpha CI inside +-margin (an
intersection-union test: no multiplicity correction needed).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gct_ablate.stats._compare import SeedKey
from gct_ablate.stats._records import CONFIDENCE, INCONCLUSIVE, NEGLIGIBLE, SIGNIFICANT

SEED_TERM = "seed"
RESIDUAL_TERM = "residual"


@dataclass
class AnovaTerm:
    """One row of the type-II ANOVA table (F, p and partial eta^2 None where undefined)."""

    term: str  # "p", "p:activation", "seed" or "residual"
    factors: list[str]  # the factors of a main effect or interaction ([] otherwise)
    df: float | None
    sum_sq: float | None
    F: float | None = None
    p: float | None = None
    partial_eta_squared: float | None = None
    verdict: str = ""  # significant / negligible / inconclusive ('' for the residual)


@dataclass
class LevelContrast:
    """A level minus the factor's reference level, from the fitted model."""

    level: str
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    equivalent: bool | None  # 1 - 2 alpha CI inside +-margin (None: no margin or no CI)


@dataclass
class FactorialAnova:
    formula: str  # in factor names, e.g. "value ~ C(p) * C(activation) + C(seed)"
    terms: list[AnovaTerm] = field(default_factory=list)
    contrasts: dict[str, list[LevelContrast]] = field(default_factory=dict)
    residual_df: float | None = None
    notes: list[str] = field(default_factory=list)


Run = tuple[Mapping[str, str], SeedKey, float]  # (levels of the cell, seed, value)


def _f(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _formula(names: Sequence[str], interactions: bool, block: bool) -> str:
    joint = (" * " if interactions else " + ").join(f"C({n})" for n in names)
    return "value ~ " + joint + (" + C(seed)" if block else "")


def _fit(formula: str, frame):  # noqa: ANN001, ANN202 (pandas and statsmodels objects)
    from statsmodels.formula.api import ols

    with warnings.catch_warnings():  # a rank-deficient design warns; the caller checks rank
        warnings.simplefilter("ignore")
        return ols(formula, data=frame).fit()


def _terms(used: Sequence[str], interactions: bool) -> list[tuple[str, ...]]:
    """Main effects, then (with ``interactions``) every interaction, in the model's order."""
    if not interactions:
        return [(f,) for f in used]
    return [c for k in range(1, len(used) + 1) for c in itertools.combinations(used, k)]


def factorial_anova(runs: Sequence[Run], factors: Sequence[str],
                    reference: Mapping[str, str], *, design: str = "full",
                    cells: Sequence[Mapping[str, str]] = (), margin: float | None = None,
                    alpha: float = 0.05, confidence: float = CONFIDENCE) -> FactorialAnova:
    """Fit and test; degenerate inputs give None values and a note, never an error.

    ``cells``: the grid's cells (to see whether the grid is replicated); ``design``: "full"
    or a fractional/one-factor-at-a-time design (main effects only).
    """
    used = [f for f in factors if len({r[0].get(f) for r in runs} - {None}) >= 2]
    names = {f: f"f{i}" for i, f in enumerate(used)}
    cells_per_seed = Counter(seed for _, seed in {(tuple(sorted(lv.items())), s)
                                                  for lv, s, _ in runs if isinstance(s, int)})
    block = len(cells_per_seed) >= 2 and max(cells_per_seed.values()) >= 2
    per_cell = Counter(tuple(sorted((f, r[0].get(f)) for f in used)) for r in runs)
    grid = [tuple(sorted((f, c.get(f)) for f in used)) for c in cells] or list(per_cell)
    replicated = all(per_cell.get(c, 0) >= 2 for c in grid)
    interactions = design == "full" and len(used) >= 2 and replicated
    out = FactorialAnova(_formula(used, interactions, block))
    if not used:
        out.notes.append("no factorial analysis: no factor has runs at two levels")
        return out
    if design != "full":
        out.notes.append(f"design {design!r}: main effects only; it cannot estimate "
                         "interactions")
    elif len(used) >= 2 and not replicated:
        out.notes.append("interactions not estimated: some cells have fewer than 2 runs")
    import pandas as pd
    from statsmodels.stats.anova import anova_lm

    frame = pd.DataFrame([{**{names[f]: lv[f] for f in used}, "seed": s, "value": v}
                          for lv, s, v in runs if all(f in lv for f in used)])
    frame["seed"] = frame["seed"].astype(str)
    formula = _formula([names[f] for f in used], interactions, block)
    fit = _fit(formula, frame)
    if block and fit.model.rank < fit.model.exog.shape[1]:
        out.notes.append("seed block left out: some seeds are not shared widely enough to "
                         "tell them from the cells")
        block, formula = False, _formula([names[f] for f in used], interactions, False)
        out.formula = _formula(used, interactions, False)
        fit = _fit(formula, frame)
    if fit.model.rank < fit.model.exog.shape[1]:  # the cells confound some effects
        out.notes.append("the cells run cannot tell the effects apart (confounded terms): "
                         "no ANOVA; run more cells (a smaller screening reduction)")
        out.terms = [AnovaTerm(":".join(t), list(t), None, None, verdict=INCONCLUSIVE)
                     for t in _terms(used, interactions)]
        return out
    out.residual_df = float(fit.df_resid)
    if fit.df_resid <= 0:  # anova_lm cannot even form the tests
        out.notes.append("no residual degrees of freedom: F and p undefined (add seeds)")
        out.terms = [AnovaTerm(":".join(t), list(t), None, None, verdict=INCONCLUSIVE)
                     for t in _terms(used, interactions)]
        if block:
            out.terms.append(AnovaTerm(SEED_TERM, [], None, None, verdict=INCONCLUSIVE))
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = anova_lm(fit, typ=2)
        except (ValueError, np.linalg.LinAlgError) as err:
            out.notes.append(f"ANOVA undefined ({type(err).__name__})")
            return out
    ss_res = float(table.loc["Residual", "sum_sq"])
    # zero up to float rounding (relative to the values themselves, not to the effects)
    defined = ss_res > 1e-20 * float((frame["value"] ** 2).sum())
    if not defined:
        out.notes.append("no residual variance (identical results): F and p undefined")
    back = {f"C({v})": k for k, v in names.items()} | {"C(seed)": SEED_TERM}
    for label, row in table.iterrows():
        if label == "Residual":
            out.terms.append(AnovaTerm(RESIDUAL_TERM, [], float(row["df"]), ss_res))
            continue
        parts = [back[p] for p in str(label).split(":")]
        ss = float(row["sum_sq"])
        term = AnovaTerm(":".join(parts), [p for p in parts if p != SEED_TERM],
                         float(row["df"]), ss)
        if defined:
            term.F, term.p = _f(row["F"]), _f(row["PR(>F)"])
            term.partial_eta_squared = _f(ss / (ss + ss_res))
        term.verdict = SIGNIFICANT if term.p is not None and term.p < alpha else INCONCLUSIVE
        out.terms.append(term)
    if not defined:
        return out
    for f in used:
        out.contrasts[f] = _contrasts(fit, formula, frame, used, names, f, reference.get(f),
                                      margin, alpha, confidence)
        main = next(t for t in out.terms if t.term == f)
        if margin is not None and out.contrasts[f] and all(c.equivalent
                                                           for c in out.contrasts[f]):
            main.verdict = NEGLIGIBLE
    return out


def _contrasts(fit, formula: str, frame, used: Sequence[str],  # noqa: ANN001
               names: Mapping[str, str], factor: str, ref: str | None, margin: float | None,
               alpha: float, confidence: float) -> list[LevelContrast]:
    """Each level of ``factor`` minus its reference level, averaged over every combination
    of the other factors' levels at one seed (the seed block cancels in a difference)."""
    import pandas as pd
    from statsmodels.formula.api import ols

    col = names[factor]
    levels = list(dict.fromkeys(frame[col]))
    if ref not in levels:
        return []
    others = [names[f] for f in used if f != factor]
    combos = list(itertools.product(*[list(dict.fromkeys(frame[o])) for o in others]))
    seed = frame["seed"].iloc[0]
    rows = [{col: lv, **dict(zip(others, combo, strict=True)), "seed": seed, "value": 0.0}
            for lv in levels for combo in combos]
    # The model's design rows for these points: the same formula over data and points
    # (the points use observed levels only, so the columns are the fit's).
    model = ols(formula, data=pd.concat([frame, pd.DataFrame(rows)], ignore_index=True))
    if list(model.exog_names) != list(fit.model.exog_names):
        return []
    x = np.asarray(model.exog[len(frame):]).reshape(len(levels), len(combos), -1).mean(axis=1)
    exog = np.asarray(fit.model.exog)
    rowspace = np.linalg.pinv(exog) @ exog
    out = []
    base = x[levels.index(ref)]
    for i, lv in enumerate(levels):
        if lv == ref:
            continue
        contrast = x[i] - base
        if not np.allclose(contrast @ rowspace, contrast, atol=1e-8):  # not estimable
            out.append(LevelContrast(lv, None, None, None, None))
            continue
        test = fit.t_test(contrast)
        lo, hi = np.asarray(test.conf_int(alpha=1 - confidence)).ravel()
        elo, ehi = np.asarray(test.conf_int(alpha=2 * alpha)).ravel()
        out.append(LevelContrast(lv, float(np.asarray(test.effect).ravel()[0]), float(lo),
                                 float(hi), None if margin is None
                                 else bool(-margin < elo and ehi < margin)))
    return out
