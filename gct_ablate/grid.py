"""The grid in Optuna: one study per ablation, every cell x seed enqueued once as a trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from gct_ablate.errors import UsageError
from gct_ablate.recovery import reap_dead_trials
from gct_ablate.spec import StudySpec, TrialConfig, cell_id
from gct_ablate.tracking import Tracker


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
    """Create or resume the study: refuse a different grid, enqueue what is missing."""
    name = spec.study_name
    direction = "maximize" if spec.maximize else "minimize"
    try:  # load first: create_study on a journal appends a record even when the study exists
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=direction, load_if_exists=True
        )
    attrs = study.user_attrs
    if "fingerprint" in attrs and attrs["fingerprint"] != spec.fingerprint():
        old = attrs["spec"]
        raise UsageError(
            f"study {name!r} exists with a different grid (vary={','.join(old['vary']) or '-'}, "
            f"set={old['set']}); pass --study NEW_NAME to start another"
        )
    if "fingerprint" not in attrs and study.trials:
        raise UsageError(f"study {name!r} exists and was not made by gct-ablate; choose --study")
    if "mlflow_parent_run_id" not in attrs:
        experiment_id = tracker.experiment(name)
        info = {**spec.to_dict(), "fp": spec.fingerprint()}
        parent = tracker.start_parent(experiment_id, name, info)
        study.set_user_attr("mlflow_experiment_id", experiment_id)
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("tracking_uri", tracker.uri)
    study.set_user_attr("spec", spec.to_dict())  # seeds may have grown
    study.set_user_attr("fingerprint", spec.fingerprint())
    study.set_user_attr("reference_cell", cell_id(spec.reference_cell()))
    study.set_user_attr("direction_maximize", spec.maximize)

    reap_dead_trials(study)
    by_key: dict[tuple[str, int], list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        key = _trial_key(t)
        if key is not None:
            by_key.setdefault(key, []).append(t)
    enqueued = done = failed_left = 0
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
    for cell, seed in spec.trials():
        trials = by_key.get((cell_id(cell), seed), [])
        if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
            done += 1
        elif any(t.state in live for t in trials):
            continue
        elif trials and not retry_failed:
            failed_left += 1
        else:
            study.enqueue_trial(dict(cell), user_attrs={"cell": cell_id(cell), "seed": seed})
            enqueued += 1
    return Prepared(study, spec, enqueued, done, failed_left)


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
