"""The statistics of a study: trial records in, a :class:`Summary` out (no storage, no I/O).

- each cell against the reference: the pooled t of the block model when cells share the
  reference's seeds, else paired t by seed or Welch (``compare``), exact tests where the
  differences do not vary, Holm-adjusted with simultaneous intervals, with a TOST
  equivalence test within +-margin, the minimum detectable difference and the seeds
  needed (``decide_family``);
- the factorial analysis: ``ols`` of the metric on the factors and the seed block, type-II
  ANOVA (``factorial_anova``);
- adaptive seeds: planned looks with alpha spent over them (``Schedule``, ``replay``,
  ``next_seeds``);
- ``summarize`` puts them together for a stored study.

Undefined quantities are ``None`` (never NaN), so callers render 'n/a' and JSON gets null.
"""

from gct_ablate.stats._anova import AnovaTerm, FactorialAnova, LevelContrast, factorial_anova
from gct_ablate.stats._compare import (
    NO_TEST,
    PAIRED,
    PERMUTATION,
    POOLED,
    SIGN,
    WELCH,
    Comparison,
    compare,
    compare_many,
)
from gct_ablate.stats._decide import (
    Decision,
    decide_cells,
    decide_family,
    holm,
    pooled_sds,
    verdict,
    with_power,
)
from gct_ablate.stats._describe import Describe, describe, mean_of_means_ci, pooled_sd
from gct_ablate.stats._power import (
    detectable_effect,
    min_detectable_difference,
    seeds_needed,
)
from gct_ablate.stats._records import (
    ALPHA,
    BETTER,
    CONFIDENCE,
    DECIDED,
    DEFAULT_MARGIN_POINTS,
    EQUIVALENT,
    FACTOR_VERDICTS,
    INCONCLUSIVE,
    NEGLIGIBLE,
    PERCENT_METRICS,
    POWER,
    REFERENCE,
    SIGNIFICANT,
    TOO_FEW,
    VERDICTS,
    WORSE,
    StudyResults,
    TrialRecord,
    metric_margin,
    points_scale,
)
from gct_ablate.stats._results import METHODS, CellStats, FactorStats, LevelStats, Summary
from gct_ablate.stats._sequential import (
    LookResult,
    Schedule,
    decide_look,
    decide_looks,
    next_seeds,
    replay,
    replay_many,
    seeds_to_decide,
)
from gct_ablate.stats._summary import conclusion, decide_study, study_values, summarize

__all__ = [
    "ALPHA", "BETTER", "CONFIDENCE", "DECIDED", "DEFAULT_MARGIN_POINTS", "EQUIVALENT",
    "FACTOR_VERDICTS", "INCONCLUSIVE", "METHODS", "NEGLIGIBLE", "NO_TEST", "PAIRED",
    "PERCENT_METRICS", "PERMUTATION", "POOLED", "SIGN", "POWER", "REFERENCE", "SIGNIFICANT",
    "TOO_FEW", "VERDICTS", "WELCH",
    "WORSE", "AnovaTerm", "CellStats", "Comparison", "Decision", "Describe", "FactorStats",
    "FactorialAnova", "LevelContrast", "LevelStats", "LookResult", "Schedule", "StudyResults",
    "Summary", "TrialRecord", "compare", "compare_many", "conclusion", "decide_cells",
    "decide_family", "decide_look", "decide_looks", "decide_study", "describe", "detectable_effect",
    "factorial_anova", "holm", "mean_of_means_ci", "metric_margin", "min_detectable_difference",
    "next_seeds", "points_scale", "pooled_sd", "pooled_sds", "replay", "replay_many",
    "seeds_needed", "seeds_to_decide", "study_values", "summarize", "verdict", "with_power",
]
