"""The few places where the tool needs Optuna below its public API, in one module.

A worker pops a WAITING trial by its id, fails a trial it does not own, and beats a
trial's heartbeat; a re-queued copy of a trial fixes its grid parameters; a trial failed
by Optuna itself says why in a system attribute. Optuna's public API has no call for
these, so they go through the study's storage, the trials' ids and system attributes
(private). If an Optuna release renames them, this is the file to change (tests/
test_library_contracts.py fails first).
"""

from __future__ import annotations

import contextlib
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from gct_ablate.store.keys import STATUS_REASON


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def get_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    return study._storage.get_trial(trial_id)


def pop_waiting(study: optuna.Study) -> int | None:
    """Atomically take a WAITING trial (WAITING -> RUNNING); its id, or None if none is left."""
    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def fail_running(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with ``status_reason``; False when it was no longer running."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, STATUS_REASON, reason)
        return bool(storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of an RDB storage with heartbeats on; None otherwise."""
    return getattr(study._storage, "get_heartbeat_interval", lambda: None)()


def record_heartbeat(study: optuna.Study, trial_id: int) -> None:
    study._storage.record_heartbeat(trial_id)


def journal_path(storage: optuna.storages.BaseStorage) -> str | None:
    """The file of a journal storage on a local file (None for other storages)."""
    backend = getattr(storage, "_backend", None)
    return getattr(backend, "_file_path", None) if isinstance(
        storage, optuna.storages.JournalStorage) else None


def journal_lock(backend: Any) -> contextlib.AbstractContextManager[None]:
    """The file lock a journal file backend appends under (Optuna's own)."""
    from optuna.storages.journal._file import get_lock_file

    return get_lock_file(backend._lock)


def rdb_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDB storage itself, also when a study wraps it in Optuna's cache layer."""
    if isinstance(storage, optuna.storages.RDBStorage):
        return storage
    inner = getattr(storage, "_backend", None)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


def fail_reason(trial: FrozenTrial) -> str | None:
    """Why Optuna itself failed a trial (a stale heartbeat), if it did."""
    return trial.system_attrs.get("fail_reason")


def waiting_copy(trial: FrozenTrial, user_attrs: dict) -> FrozenTrial:
    """A WAITING copy of ``trial`` with its grid parameters fixed (what a worker's
    ``suggest_categorical`` then returns, as for an enqueued trial)."""
    return optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=user_attrs, system_attrs={"fixed_params": trial.params})
