"""Writing what a study stores: the study's attributes at creation, each trial's labels."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from gct_ablate.spec import StudySpec, cell_id, parse_cell_id
from gct_ablate.store import _optuna, keys
from gct_ablate.store.recipe import recipe_attrs

# What a worker writes on a trial, by name (see StoredTrial): owner first, host to proc.
_TRIAL_KEYS = {"host": keys.HOST, "pid": keys.PID, "proc": keys.PROC, "device": keys.DEVICE,
               "run_id": keys.RUN_ID, "metrics": keys.METRICS, "reason": keys.STATUS_REASON,
               "resumed_from": keys.RESUMED_FROM}


def write_grid(study: optuna.Study, spec: StudySpec) -> None:
    """The spec (seeds may have grown), its grid's fingerprint, reference and direction."""
    study.set_user_attr(keys.SPEC, spec.to_dict())
    study.set_user_attr(keys.FINGERPRINT, spec.fingerprint())
    study.set_user_attr(keys.REFERENCE_CELL, cell_id(spec.reference_cell()))
    study.set_user_attr(keys.DIRECTION_MAXIMIZE, spec.maximize)


def write_recipe(study: optuna.Study, spec: StudySpec) -> None:
    """The recipe of every cell, once: a study keeps the one it was created with."""
    if keys.RECIPE not in study.user_attrs:
        for key, value in recipe_attrs(spec).items():
            study.set_user_attr(key, value)


def write_tracking(study: optuna.Study, experiment_id: str, parent_run_id: str,
                   uri: str) -> None:
    study.set_user_attr(keys.EXPERIMENT_ID, experiment_id)
    study.set_user_attr(keys.PARENT_RUN_ID, parent_run_id)
    study.set_user_attr(keys.TRACKING_URI, uri)


def mark_queued(study: optuna.Study) -> None:
    study.set_user_attr(keys.QUEUED, True)


def enqueue_cell(study: optuna.Study, cell: str, seed: int) -> None:
    study.enqueue_trial(dict(parse_cell_id(cell)), user_attrs={keys.CELL: cell, keys.SEED: seed})


def add_retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Queue a copy of ``trial``'s cell x seed that says which trial it redoes and why."""
    attrs = trial.user_attrs
    study.add_trial(_optuna.waiting_copy(trial, {
        keys.CELL: attrs[keys.CELL], keys.SEED: attrs[keys.SEED], keys.RETRY_OF: trial.number,
        keys.RETRY_REASON: reason}))


def label(trial: optuna.Trial, **values: Any) -> None:
    """Write ``values`` (host, pid, proc, device, run_id, metrics, reason, resumed_from) on
    a running trial, in the order given."""
    for name, value in values.items():
        trial.set_user_attr(_TRIAL_KEYS[name], value)
