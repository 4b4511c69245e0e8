"""Trials whose worker died: found (heartbeat, or a dead process on this host), failed, redone.

A worker labels each trial it runs with its host, pid and process start time; a RUNNING
trial whose process is gone on this host, or whose heartbeat stopped (RDB storages), is
failed, its MLflow run marked KILLED, and a copy of its cell x seed queued again.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from gct_ablate.locks import study_lock
from gct_ablate.store import _optuna, keys
from gct_ablate.store.records import LIVE, stored_study, stored_trial, stored_trials
from gct_ablate.store.write import add_retry
from gct_ablate.tracking import Tracker

UNLABELLED_GRACE = 30.0  # seconds a worker has to label the trial it took with its pid


def _process_token(pid: int) -> str | None:
    """'pid:start-time' of a live process (start time guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f"{pid}:{f.read().rsplit(')', 1)[1].split()[19]}"
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: fall back to a signal-0 probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"{pid}:?"


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "proc": _process_token(os.getpid()) or f"{os.getpid()}:?"}


def _is_dead_here(trial: FrozenTrial) -> bool:
    """Its worker ran on this host and its process is gone.

    The owner writes host, pid, proc one by one (see :func:`owner`): without "proc" yet,
    only a pid with no live process at all counts as dead, never a live one still writing.
    A trial that got no pid at all (its worker died right after taking it, or a cut journal
    lost the labels) counts as dead once it has run for :data:`UNLABELLED_GRACE` seconds.
    """
    stored, here = stored_trial(trial), socket.gethostname()
    if stored.pid is None:
        started = trial.datetime_start
        return ((stored.host or here) == here and started is not None
                and (datetime.datetime.now() - started).total_seconds() > UNLABELLED_GRACE)
    if stored.host != here:
        return False
    token = _process_token(int(stored.pid))
    if stored.proc is None:
        return token is None
    return token != stored.proc


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str = "") -> bool:
    """Put a copy of a failed trial's cell x seed back in the queue, unless that cell x seed
    already has a live trial (queued, running or finished); True if queued."""
    key = stored_trial(trial).key
    with study_lock(study):
        if any(t.key == key for t in stored_trials(study, LIVE)):
            return False
        add_retry(study, trial, reason)
    return True


def requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat callback: the trial is already FAIL; redo its cell x seed."""
    reason = "worker lost (no heartbeat)"
    end_mlflow(study, trial, "KILLED", reason)
    if stored_trial(trial).key is not None:
        requeue(study, trial, reason)


def reap_dead_trials(study: optuna.Study) -> int:
    """Fail and re-queue RUNNING trials whose worker died (heartbeat or, here, process gone)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = f"worker died (pid {stored_trial(t).pid})"
        if _is_dead_here(t) and fail_and_requeue(study, t, reason):
            n += 1
    return n


def fail_and_requeue(
    study: optuna.Study, trial: FrozenTrial, reason: str, end_run: bool = True
) -> bool:
    """Fail a trial that is still RUNNING and queue its cell x seed again (False: not running).

    ``end_run``: also mark its MLflow run KILLED (not when the tracking store is the problem:
    each call would wait out MLflow's HTTP retries).
    """
    if trial.state != TrialState.RUNNING or not _optuna.fail_running(study, trial, reason):
        return False
    if end_run:
        end_mlflow(study, trial, "KILLED", reason)
    requeue(study, trial, reason)
    return True


def end_mlflow(study: optuna.Study, trial: FrozenTrial, status: str, reason: str) -> None:
    from gct_ablate.relocate import study_uri
    from gct_ablate.tracking import existing_store

    run_id = stored_trial(trial).run_id
    with contextlib.suppress(Exception):  # tracking is best effort for a dead trial
        uri = study_uri(stored_study(study).tracking_uri, _optuna.storage_of(study))
        if run_id and uri:  # a local store that is not there is not created
            Tracker(existing_store(uri)).end_trial(run_id, status, reason)


def close_orphan_runs(study: optuna.Study, tracker: Tracker) -> int:
    """Mark KILLED the study's trial runs left RUNNING in MLflow by a worker that died between
    creating its run and storing the run id on its trial; the number closed.

    An orphan is a RUNNING trial run that no trial points to, whose trial (by its
    trial-number tag) is no longer running. The trial itself is failed and
    re-queued by :func:`reap_dead_trials`; its re-run gets its own MLflow run.
    """
    experiment = stored_study(study).experiment_id
    if not experiment:
        return 0
    runs = tracker.running_trial_runs(experiment)  # before the trials: a run listed here was
    trials = study.get_trials(deepcopy=False)  # made after its trial was popped (RUNNING)
    running = {t.number for t in trials if t.state == TrialState.RUNNING}
    known = {stored_trial(t).run_id for t in trials}
    closed = 0
    for run in runs:
        number = run.data.tags.get(keys.TAG_TRIAL_NUMBER, "")
        if run.info.run_id in known or (number.isdigit() and int(number) in running):
            continue
        tracker.end_trial(run.info.run_id, "KILLED",
                          "orphan: its worker died before the trial stored this run")
        closed += 1
    return closed
