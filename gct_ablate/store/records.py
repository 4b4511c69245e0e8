"""Typed records of what a study stored, read from its Optuna study and trials.

Nothing outside :mod:`gct_ablate.store` reads an attribute key: it reads a
:class:`StoredStudy` or a :class:`StoredTrial`, and writes through :mod:`.write`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from gct_ablate.store import keys
from gct_ablate.store._optuna import fail_reason

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class StoredStudy:
    """A study as the tool stored it: its spec, recipe, grid and MLflow places."""

    name: str
    spec: dict[str, Any] | None  # StudySpec.to_dict(); None: not made by gct-ablate
    recipe: dict[str, dict[str, str]] | None  # cell id -> every factor of that cell
    fingerprint: str | None
    experiment_id: str | None
    parent_run_id: str | None
    tracking_uri: str | None
    reference_cell: str | None
    maximize: bool | None
    queued: bool  # the grid is in the queue: workers may pull
    version: str | None  # the gct-ablate that stored the recipe
    attrs: dict[str, Any] = field(repr=False, default_factory=dict)  # for with_recipe

    @property
    def made_by_tool(self) -> bool:
        return self.fingerprint is not None

    @property
    def schedule(self) -> dict[str, int]:
        """seeds and, for an adaptive study, max_seeds and seed_batch."""
        spec = self.spec or {}
        return {k: int(spec[k]) for k in ("seeds", "max_seeds", "seed_batch") if spec.get(k)}


@dataclass(frozen=True)
class StoredTrial:
    """One trial: which cell x seed, who ran it where, what came out."""

    number: int
    state: str  # COMPLETE, PRUNED, RUNNING, WAITING or FAIL
    cell: str | None  # None: a trial the tool did not queue
    seed: int | None
    host: str | None
    pid: str | None
    proc: str | None  # 'pid:start-time' of its worker
    device: str | None
    run_id: str | None  # its MLflow run
    metrics: dict[str, Any]
    reason: str | None  # why it failed or was pruned
    retry_of: int | None
    value: float | None
    params: dict[str, str]
    curve: dict[int, float]  # the reported metric per epoch
    started: datetime | None
    completed: datetime | None

    @property
    def key(self) -> tuple[str, int] | None:
        return None if self.cell is None or self.seed is None else (self.cell, self.seed)


def stored_study(study: optuna.Study) -> StoredStudy:
    a = study.user_attrs

    def text(key: str) -> str | None:
        return None if a.get(key) is None else str(a[key])

    maximize = a.get(keys.DIRECTION_MAXIMIZE)
    return StoredStudy(
        name=study.study_name, spec=a.get(keys.SPEC) if isinstance(a.get(keys.SPEC), dict)
        else None, recipe=a.get(keys.RECIPE), fingerprint=text(keys.FINGERPRINT),
        experiment_id=text(keys.EXPERIMENT_ID), parent_run_id=text(keys.PARENT_RUN_ID),
        tracking_uri=text(keys.TRACKING_URI), reference_cell=text(keys.REFERENCE_CELL),
        maximize=None if maximize is None else bool(maximize), queued=bool(a.get(keys.QUEUED)),
        version=text(keys.TOOL_VERSION), attrs=dict(a))


def stored_trial(t: FrozenTrial) -> StoredTrial:
    a = t.user_attrs

    def text(key: str) -> str | None:
        return None if a.get(key) is None else str(a[key])

    return StoredTrial(
        number=t.number, state=t.state.name, cell=text(keys.CELL),
        seed=None if a.get(keys.SEED) is None else int(a[keys.SEED]),
        host=text(keys.HOST), pid=text(keys.PID), proc=text(keys.PROC),
        device=text(keys.DEVICE), run_id=text(keys.RUN_ID),
        metrics=dict(a.get(keys.METRICS) or {}),
        reason=text(keys.STATUS_REASON) or fail_reason(t),
        retry_of=None if a.get(keys.RETRY_OF) is None else int(a[keys.RETRY_OF]),
        value=t.value if t.values is not None and len(t.values) == 1 else None,
        params={k: str(v) for k, v in t.params.items()},
        curve={int(k): float(v) for k, v in t.intermediate_values.items()},
        started=t.datetime_start, completed=t.datetime_complete)


def stored_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None
                  ) -> list[StoredTrial]:
    return [stored_trial(t) for t in study.get_trials(deepcopy=False, states=states)]


def trials_by_key(study: optuna.Study) -> dict[tuple[str, int], list[FrozenTrial]]:
    """The study's trials grouped by (cell id, seed) (trials the tool did not queue left out)."""
    by_key: dict[tuple[str, int], list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        key = trial_key(t)
        if key is not None:
            by_key.setdefault(key, []).append(t)
    return by_key


def trial_key(t: FrozenTrial) -> tuple[str, int] | None:
    """(cell id, seed) of a trial the tool queued, else None."""
    if keys.CELL not in t.user_attrs:
        return None
    return t.user_attrs[keys.CELL], int(t.user_attrs[keys.SEED])
