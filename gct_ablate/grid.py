"""The grid in Optuna: one study per ablation, every cell x seed enqueued once as a trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from gct_ablate._util import mask_url
from gct_ablate.errors import UsageError
from gct_ablate.locks import sqlite_path, storage_lock
from gct_ablate.recovery import close_orphan_runs, reap_dead_trials
from gct_ablate.relocate import same_store, stored_form, study_uri
from gct_ablate.spec import StudySpec, TrialConfig, cell_id, parse_cell_id
from gct_ablate.tracking import Tracker, check_tracking


def _trial_key(trial: FrozenTrial) -> tuple[str, int] | None:
    if "cell" not in trial.user_attrs:
        return None
    return trial.user_attrs["cell"], int(trial.user_attrs["seed"])


def distributions(spec: StudySpec) -> dict[str, CategoricalDistribution]:
    return {n: CategoricalDistribution(list(spec.levels[n])) for n in spec.vary}


def spec_from_attrs(attrs: dict[str, Any], base: TrialConfig | None = None) -> StudySpec:
    """The spec a study was created with (its ``spec`` user attribute)."""
    return StudySpec.from_dict(attrs["spec"], base)


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
        try:  # load first: create_study on a journal appends a record even when it exists
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            direction = "maximize" if spec.maximize else "minimize"
            study = optuna.create_study(study_name=name, storage=storage, direction=direction)
        _check_same_study(study, spec, tracker)
        if study.metric_names is None:  # optuna-dashboard names the objective after it
            name_objective(study, spec.metric)
        if "mlflow_parent_run_id" not in study.user_attrs:
            experiment_id = tracker.experiment(name)
            info = {**spec.to_dict(), "fp": spec.fingerprint()}
            parent = tracker.start_parent(experiment_id, name, info)
            study.set_user_attr("mlflow_experiment_id", experiment_id)
            study.set_user_attr("mlflow_parent_run_id", parent)
            study.set_user_attr("tracking_uri", stored_form(tracker.uri, storage))
        elif "mlflow_experiment_id" in study.user_attrs:  # resumed: tag older experiments
            tracker.tag_experiment(str(study.user_attrs["mlflow_experiment_id"]))
        study.set_user_attr("spec", spec.to_dict())  # seeds may have grown
        study.set_user_attr("fingerprint", spec.fingerprint())
        study.set_user_attr("reference_cell", cell_id(spec.reference_cell()))
        study.set_user_attr("direction_maximize", spec.maximize)
        reap_dead_trials(study)
        close_orphan_runs(study, tracker)
        counts = enqueue_missing(study, [(cell_id(c), s) for c, s in spec.trials()],
                                 retry_failed=retry_failed)
        study.set_user_attr(QUEUED, True)
    return Prepared(study, spec, *counts)


def name_objective(study: optuna.Study, metric: str) -> None:
    """Name the study's objective after the metric (dashboards show it, not "Objective 0")."""
    import warnings

    with warnings.catch_warnings():  # experimental in Optuna; the call itself is stable
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])


QUEUED = "grid_queued"  # set once the grid is in the queue: workers may start pulling


def _check_same_study(study: optuna.Study, spec: StudySpec, tracker: Tracker) -> None:
    """One-line errors for a study of that name that is not this one, or tracked elsewhere."""
    attrs, name = study.user_attrs, spec.study_name
    if "fingerprint" in attrs and attrs["fingerprint"] != spec.fingerprint():
        old = attrs["spec"]
        raise UsageError(
            f"study {name!r} exists with a different grid (vary={','.join(old['vary']) or '-'}, "
            f"set={old['set']}); pass --study NEW_NAME to start another"
        )
    if "fingerprint" not in attrs and study.trials:
        raise UsageError(f"study {name!r} exists and was not made by gct-ablate; choose --study")
    check_tracking_uri(study, tracker.uri)
    parent = attrs.get("mlflow_parent_run_id")
    if parent and not tracker.has_run(parent):
        raise UsageError(f"study {name!r}: its MLflow parent run {parent} is not in "
                         f"{mask_url(tracker.uri)} (was the tracking store moved or deleted?); "
                         "pass --study NEW_NAME to start the study again")


def check_tracking_uri(study: optuna.Study, uri: str) -> None:
    """Refuse to track a study in another MLflow store than the one it was created with.

    Another URI for the same store (a server reached under another name) is accepted: it
    holds the study's parent run. A local store that does not exist yet is not created.
    """
    from gct_ablate import _optuna

    attrs = study.user_attrs
    stored = study_uri(attrs.get("tracking_uri"), _optuna.storage_of(study))
    parent = attrs.get("mlflow_parent_run_id")
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


def trials_by_key(study: optuna.Study) -> dict[tuple[str, int], list[FrozenTrial]]:
    """The study's trials grouped by (cell id, seed)."""
    by_key: dict[tuple[str, int], list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        key = _trial_key(t)
        if key is not None:
            by_key.setdefault(key, []).append(t)
    return by_key


LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def enqueue_missing(study: optuna.Study, wanted: list[tuple[str, int]], *,
                    retry_failed: bool = False) -> tuple[int, int, int]:
    """Queue each (cell id, seed) that has no live trial; (enqueued, done, failed left).

    The caller holds the study's lock (:func:`gct_ablate.locks.study_lock`), so that two
    processes never queue the same cell x seed.
    """
    by_key = trials_by_key(study)
    enqueued = done = failed_left = 0
    for cell, seed in wanted:
        trials = by_key.get((cell, seed), [])
        if any(t.state in DONE for t in trials):
            done += 1
        elif any(t.state in LIVE for t in trials):
            continue
        elif trials and not retry_failed:
            failed_left += 1
        else:
            params = dict(parse_cell_id(cell))
            study.enqueue_trial(params, user_attrs={"cell": cell, "seed": seed})
            enqueued += 1
    return enqueued, done, failed_left


def find_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    """The stored study of ``spec``'s name, None if there is none; read before anything is
    created (the cost check), so a different grid is refused here in one line too."""
    try:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
    except KeyError:
        return None
    old = study.user_attrs.get("spec")
    if study.user_attrs.get("fingerprint") not in (None, spec.fingerprint()):
        raise UsageError(
            f"study {spec.study_name!r} exists with a different grid (vary="
            f"{','.join(old['vary']) or '-'}, set={old['set']}, design="
            f"{old.get('design', 'full')}); pass --study NEW_NAME to start another")
    return study
