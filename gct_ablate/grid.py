"""The grid in Optuna: one study per ablation, every cell x seed enqueued once as a trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from gct_ablate._util import mask_url
from gct_ablate.errors import UsageError
from gct_ablate.locks import sqlite_path, storage_lock
from gct_ablate.recovery import close_orphan_runs, reap_dead_trials
from gct_ablate.relocate import same_store, stored_form, study_uri
from gct_ablate.spec import StudySpec, TrialConfig, cell_id
from gct_ablate.store import _optuna, keys
from gct_ablate.store.open import find_study, verify
from gct_ablate.store.recipe import with_recipe
from gct_ablate.store.records import DONE, LIVE, stored_study, trials_by_key
from gct_ablate.store.write import (
    enqueue_cell,
    mark_queued,
    write_grid,
    write_recipe,
    write_tracking,
)
from gct_ablate.tracking import Tracker, check_tracking


def distributions(spec: StudySpec) -> dict[str, CategoricalDistribution]:
    return {n: CategoricalDistribution(list(spec.levels[n])) for n in spec.vary}


def spec_from_attrs(attrs: dict[str, Any], base: TrialConfig | None = None) -> StudySpec:
    """The spec a study was created with, its cells resolving to its stored recipe
    (:mod:`gct_ablate.store.recipe`); ``attrs``: the study's user attributes."""
    return with_recipe(StudySpec.from_dict(attrs[keys.SPEC], base), attrs)


@dataclass
class Prepared:
    study: optuna.Study
    spec: StudySpec
    enqueued: int
    done: int
    failed_left: int  # failed cells not re-queued (use --retry-failed)


def prepare_study(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    *,
    retry_failed: bool = False,
) -> Prepared:
    """Create or resume the study: refuse a different grid or tracking store, enqueue what is
    missing. Safe when many processes start it at once: one creates, the others resume."""
    name = spec.study_name
    with storage_lock(storage, f"study:{name}"):
        study = find_study(storage, name)  # first: create_study on a journal appends a record
        if study is None:
            direction = "maximize" if spec.maximize else "minimize"
            study = optuna.create_study(study_name=name, storage=storage, direction=direction)
        _check_same_study(study, spec, tracker)
        write_recipe(study, spec)  # kept from creation on: resumes train it
        if study.metric_names is None:  # optuna-dashboard names the objective after it
            name_objective(study, spec.metric)
        stored = stored_study(study)
        if stored.parent_run_id is None:
            experiment_id = tracker.experiment(name)
            info = {**spec.to_dict(), "fp": spec.fingerprint()}
            parent = tracker.start_parent(experiment_id, name, info)
            write_tracking(study, experiment_id, parent, stored_form(tracker.uri, storage))
        elif stored.experiment_id is not None:  # resumed: tag older experiments
            tracker.tag_experiment(stored.experiment_id)
        write_grid(study, spec)  # seeds may have grown
        reap_dead_trials(study)
        close_orphan_runs(study, tracker)
        counts = enqueue_missing(study, [(cell_id(c), s) for c, s in spec.trials()],
                                 retry_failed=retry_failed)
        mark_queued(study)
    return Prepared(study, spec, *counts)


def name_objective(study: optuna.Study, metric: str) -> None:
    """Name the study's objective after the metric (dashboards show it, not "Objective 0")."""
    import warnings

    with warnings.catch_warnings():  # experimental in Optuna; the call itself is stable
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])


def _check_same_study(study: optuna.Study, spec: StudySpec, tracker: Tracker) -> None:
    """One-line errors for a study of that name that is not this one, or tracked elsewhere."""
    name = spec.study_name
    verify(study, spec)
    check_tracking_uri(study, tracker.uri)
    parent = stored_study(study).parent_run_id
    if parent and not tracker.has_run(parent):
        raise UsageError(f"study {name!r}: its MLflow parent run {parent} is not in "
                         f"{mask_url(tracker.uri)} (was the tracking store moved or deleted?); "
                         "pass --study NEW_NAME to start the study again")


def check_tracking_uri(study: optuna.Study, uri: str) -> None:
    """Refuse to track a study in another MLflow store than the one it was created with.

    Another URI for the same store (a server reached under another name) is accepted: it
    holds the study's parent run. A local store that does not exist yet is not created.
    """
    found = stored_study(study)
    stored = study_uri(found.tracking_uri, _optuna.storage_of(study))
    parent = found.parent_run_id
    if not stored or same_store(stored, uri):
        return
    path = sqlite_path(uri)
    if parent and (path is None or path.exists()):
        check_tracking(uri)
        if Tracker(uri).has_run(parent):
            return
    raise UsageError(
            f"study {study.study_name!r} is tracked at {mask_url(stored)}, not at "
            f"{mask_url(uri)}; pass --tracking-uri {mask_url(stored)} (or the --out folder "
            "of its first run)")


def enqueue_missing(study: optuna.Study, wanted: list[tuple[str, int]], *,
                    retry_failed: bool = False) -> tuple[int, int, int]:
    """Queue each (cell id, seed) that has no live trial; (enqueued, done, failed left).

    The caller holds the study's lock (:func:`gct_ablate.locks.study_lock`), so that two
    processes never queue the same cell x seed.
    """
    queue, done, failed_left = missing(study, wanted, retry_failed=retry_failed)
    for cell, seed in queue:
        enqueue_cell(study, cell, seed)
    return len(queue), done, failed_left


def missing(study: optuna.Study | None, wanted: list[tuple[str, int]], *,
            retry_failed: bool = False) -> tuple[list[tuple[str, int]], int, int]:
    """What :func:`enqueue_missing` would queue, nothing written: (cell x seeds to queue,
    done, failed left); ``study`` None: a study not created yet."""
    by_key = trials_by_key(study) if study is not None else {}
    queue: list[tuple[str, int]] = []
    done = failed_left = 0
    for cell, seed in wanted:
        trials = by_key.get((cell, seed), [])
        if any(t.state in DONE for t in trials):
            done += 1
        elif any(t.state in LIVE for t in trials):
            continue
        elif trials and not retry_failed:
            failed_left += 1
        else:
            queue.append((cell, seed))
    return queue, done, failed_left

