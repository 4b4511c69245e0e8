"""The summary's first line: what the study learnt about each factor, then about the cells.

A factor's main effect is its levels' contrasts with the reference level in the factorial
model (averaged over the other factors); its verdict is the ANOVA's (significant /
negligible / inconclusive). The line gives the largest contrast with its 95 % interval.
"""

from __future__ import annotations

from collections import Counter

from gct_ablate.stats._records import BETTER, EQUIVALENT, INCONCLUSIVE, VERDICTS, WORSE
from gct_ablate.stats._results import FactorStats, LevelStats, Summary


def _largest(f: FactorStats) -> LevelStats | None:
    shown = [lv for lv in f.levels if not lv.is_reference and lv.delta is not None]
    return max(shown, key=lambda lv: abs(lv.delta or 0.0), default=None)


def _signed(s: Summary, x: float | None) -> str:
    text = s.points(x)
    return text if text.startswith("-") or text == "n/a" else f"+{text}"


def factor_phrase(s: Summary, f: FactorStats) -> str:
    """'attention significant (largest: se vs gct +0.8 [+0.3, +1.3])'."""
    level = _largest(f)
    ref = next((lv.level for lv in f.levels if lv.is_reference), "ref")
    if level is None:
        return f"{f.name} {f.verdict}"
    interval = ("" if level.delta_ci_low is None or level.delta_ci_high is None else
                f" [{_signed(s, level.delta_ci_low)}, {_signed(s, level.delta_ci_high)}]")
    return (f"{f.name} {f.verdict} (largest: {level.level} vs {ref} "
            f"{_signed(s, level.delta)}{interval})")


def headline(s: Summary) -> str:
    """Factors first (main effects, points for accuracies), then the cells' tally."""
    others = [c for c in s.cells if not c.is_reference]
    counts = Counter(c.verdict for c in others)
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
    cells = f"Cells vs the reference: {tally}." if others else "A single cell."
    if not s.factors or not s.anova:
        return cells
    unit = "points" if s.percent else s.metric
    factors = "; ".join(factor_phrase(s, f) for f in s.factors)
    return f"Factors (main effects over the other factors, {unit}, 95 % CI): {factors}. {cells}"


def conclusion(s: Summary) -> str:
    """One line: what the study can detect with its seeds, and what it would need."""
    others = [c for c in s.cells if not c.is_reference]
    if not others:
        return "A single cell: nothing to compare."
    tested = [c for c in others if c.mdd is not None]
    counts = Counter(c.verdict for c in others)
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
    if not tested:
        return f"Nothing can be concluded yet ({tally}): a cell needs >= 2 runs and a spread."
    kind = Counter((c.test, c.n_test) for c in tested).most_common(1)[0][0]
    n = kind[1]
    typical = max((c for c in tested if (c.test, c.n_test) == kind), key=lambda c: c.mdd or 0.0)
    unit = "points" if s.percent else s.metric
    upper = (f", up to {s.points(typical.mdd_upper)} at the sd's upper 95 % bound"
             if typical.mdd_upper is not None else "")
    df = f", {typical.test_df:.0f} df" if typical.test_df is not None else ""
    line = (f"With {n} seeds per cell this study detects differences >= "
            f"{s.points(typical.mdd)} {unit}{upper} ({typical.test}{df}, {s.power:.0%} power, "
            f"alpha {s.alpha_power:.2g})")
    if s.margin is not None and typical.seeds_needed is not None:
        if typical.mdd is not None and typical.mdd <= s.margin:
            line += f", within the margin {s.points(s.margin)}"
        else:
            line += (f"; {typical.seeds_needed} seeds per cell would detect the margin "
                     f"{s.points(s.margin)}")
    decided = counts[BETTER] + counts[WORSE] + counts[EQUIVALENT]
    if counts[INCONCLUSIVE] and not decided:
        line += ". No cell is decided: inconclusive is not 'no difference'"
    return f"{line} ({tally})."
