"""The summary's first line: what the study learnt about each factor, then about the cells.

A factor's main effect is its levels' contrasts with the reference level in the factorial
model (averaged over the other factors); its verdict is the ANOVA's (significant /
negligible / inconclusive). The line gives the largest contrast with its 95 % interval.
"""

from __future__ import annotations

from collections import Counter

from gct_ablate.stats._records import VERDICTS
from gct_ablate.stats._results import FactorStats, LevelStats, Summary


def _largest(f: FactorStats) -> LevelStats | None:
    shown = [lv for lv in f.levels if not lv.is_reference and lv.delta is not None]
    return max(shown, key=lambda lv: abs(lv.delta or 0.0), default=None)


def _signed(s: Summary, x: float | None) -> str:
    text = s.points(x)
    return text if text.startswith("-") or text == "n/a" else f"+{text}"


def factor_phrase(s: Summary, f: FactorStats) -> str:
    """'attention significant (se - none +0.8 [+0.3, +1.3])'."""
    level = _largest(f)
    ref = next((lv.level for lv in f.levels if lv.is_reference), "ref")
    if level is None:
        return f"{f.name} {f.verdict}"
    interval = ("" if level.delta_ci_low is None or level.delta_ci_high is None else
                f" [{_signed(s, level.delta_ci_low)}, {_signed(s, level.delta_ci_high)}]")
    return f"{f.name} {f.verdict} ({level.level} - {ref} {_signed(s, level.delta)}{interval})"


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
