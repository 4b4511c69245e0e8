"""What the statistics read (trial records of a stored study) and the constants they share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gct_ablate.errors import SpecError

ALPHA = 0.05
CONFIDENCE = 0.95
POWER = 0.8  # of the minimum detectable difference and of the seeds needed

# Verdicts of a cell against the reference.
REFERENCE = "reference"
BETTER = "better"
WORSE = "worse"
EQUIVALENT = "equivalent"  # the 1 - 2 alpha CI of delta lies inside +-margin
INCONCLUSIVE = "inconclusive"  # neither a difference nor equivalence shown
TOO_FEW = "too few runs"
VERDICTS = (REFERENCE, BETTER, WORSE, EQUIVALENT, INCONCLUSIVE, TOO_FEW)
DECIDED = (BETTER, WORSE, EQUIVALENT)

# Verdicts of a factor (and of an interaction or the seed block) in the factorial analysis.
SIGNIFICANT = "significant"
NEGLIGIBLE = "negligible"  # every level within +-margin of the reference level
FACTOR_VERDICTS = (SIGNIFICANT, NEGLIGIBLE, INCONCLUSIVE)

PERCENT_METRICS = ("val_top1", "val_top5")
# The smallest difference that matters, in points of the metric (percentage points for
# accuracies). val_loss has no default: a loss difference that matters depends on the task,
# so without --margin its cells get no equivalence test and no seeds-needed figure.
DEFAULT_MARGIN_POINTS: dict[str, float] = {"val_top1": 0.5, "val_top5": 0.5}


def points_scale(metric: str) -> float:
    """Points per metric unit: 100 for accuracies (stored as fractions), else 1."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def metric_margin(metric: str, points: float | None = None) -> float | None:
    """The margin in metric units from ``points`` (default: the metric's default, if any)."""
    if points is None:
        points = DEFAULT_MARGIN_POINTS.get(metric)
    if points is None:
        return None
    if not (math.isfinite(points) and points > 0):
        raise SpecError(f"invalid margin {points}; must be a positive number (points of "
                        "the metric)")
    return points / points_scale(metric)


@dataclass
class TrialRecord:
    """One Optuna trial, reduced to what the summary needs."""

    cell: str
    seed: int | None
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    number: int = 0
    mlflow_run_id: str | None = None
    reason: str | None = None
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> the metric reported then


@dataclass
class StudyResults:
    """Everything stored for one study: its spec (``StudySpec.to_dict()``) and trials."""

    spec: dict[str, Any]
    reference_cell: str
    maximize: bool
    trials: list[TrialRecord]
    study_name: str = ""
    fingerprint: str | None = None
    tracking: dict[str, str] = field(default_factory=dict)  # mlflow ids, tracking_uri
