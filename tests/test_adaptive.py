"""Adaptive seeds (``run --until-decided``): looks judged once on complete data, their seeds
queued once however many processes ask, the same schedule on resume."""

from __future__ import annotations

import collections
import random
import threading
from pathlib import Path

import optuna
import pytest
from conftest import TINY, assert_each_once, run_cli
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from gct_ablate.adaptive import check_same_schedule, next_look, schedule_of
from gct_ablate.errors import UsageError
from gct_ablate.grid import prepare_study
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.storage import open_storage
from gct_ablate.store._optuna import fail_running
from gct_ablate.tracking import Tracker, default_tracking_uri

CELLS = ("p=1", "p=2", "p=inf")


def adaptive_spec(**kw) -> StudySpec:
    defaults = dict(vary=("p",), levels={"p": ("1", "2", "inf")}, fixed={"epochs": 1},
                    seeds=3, name="adapt", max_seeds=9, seed_batch=3, margin=0.5,
                    base=TrialConfig(threads=1, save_model=False))
    return StudySpec(**{**defaults, **kw})


def finished_look(tmp_path: Path, spec: StudySpec, means: dict[str, float]):
    """A study whose first look is stored as COMPLETE trials with synthetic values."""
    storage = open_storage(None, tmp_path)
    tracker = Tracker(default_tracking_uri(tmp_path), artifact_root=tmp_path / "art")
    study = prepare_study(spec, storage, tracker).study
    rng = random.Random(0)
    dist = {"p": CategoricalDistribution(["1", "2", "inf"])}
    for t in study.get_trials(states=(TrialState.WAITING,)):  # take the queue away
        fail_running(study, t, "replaced by synthetic values")
    for cell, mean in means.items():
        for seed in range(spec.seeds):
            study.add_trial(optuna.trial.create_trial(
                value=mean + rng.gauss(0, 0.002) + 0.004 * seed, params={"p": cell[2:]},
                distributions=dist, user_attrs={"cell": cell, "seed": seed}))
    return storage, study


def test_a_look_queues_the_next_seeds_once_however_many_ask(tmp_path: Path) -> None:
    spec = adaptive_spec()
    storage, study = finished_look(tmp_path, spec, {"p=1": 0.95, "p=2": 0.95, "p=inf": 0.95})
    barrier = threading.Barrier(4)
    outcomes: list = []

    def ask() -> None:
        barrier.wait()
        outcomes.append(next_look(study, storage, spec))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    judged = [(r, n) for r, n in outcomes if r is not None]
    assert len(outcomes) == 4 and len(judged) == 1  # the others found the queue busy
    result, queued = judged[0]
    assert result.look == 1 and queued == 3 * (1 + len(result.undecided))
    waiting = collections.Counter((t.user_attrs["cell"], t.user_attrs["seed"]) for t in
                                  study.get_trials(states=(TrialState.WAITING,)))
    assert set(waiting.values()) == {1}
    assert {s for _, s in waiting} == {3, 4, 5}
    assert next_look(study, storage, spec) == (None, 0)  # seeds queued: nothing to judge


def test_a_decided_study_queues_nothing(tmp_path: Path) -> None:
    spec = adaptive_spec(margin=5.0)  # wide margin: equal cells are equivalent at once
    storage, study = finished_look(tmp_path, spec, {"p=1": 0.95, "p=2": 0.95, "p=inf": 0.95})
    result, queued = next_look(study, storage, spec)
    assert result.final and not result.undecided and queued == 0


def test_a_changed_schedule_is_refused_on_resume() -> None:
    stored = adaptive_spec().to_dict()
    check_same_schedule(stored, adaptive_spec())
    with pytest.raises(UsageError, match="resume it with the same"):
        check_same_schedule(stored, adaptive_spec(max_seeds=12))
    with pytest.raises(UsageError, match="max_seeds"):
        schedule_of(adaptive_spec(max_seeds=None, seed_batch=None))


def test_until_decided_runs_to_a_decision_with_two_workers(tmp_path: Path) -> None:
    """End to end on digits: looks until every cell is decided or max seeds is reached, then
    a line per cell still inconclusive; every cell x seed trained once."""
    result = run_cli(["run", "--vary", "p", "--levels", "p=1,2", "--seeds", "2", *TINY,
                      "--until-decided", "--max-seeds", "4", "--seed-batch", "2",
                      "--workers", "2", "--study", "adapt", "--out", str(tmp_path)], tmp_path,
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "look 1 of 2" in result.stdout
    assert "Every cell is decided." in result.stdout or "needs about" in result.stdout \
        or "needs more seeds" in result.stdout
    study = optuna.load_study(study_name="adapt", storage=open_storage(None, tmp_path))
    trials = study.get_trials()
    seeds = collections.defaultdict(set)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            seeds[t.user_attrs["cell"]].add(int(t.user_attrs["seed"]))
    assert seeds["p=2"] in ({0, 1}, {0, 1, 2, 3})  # the reference: 2 seeds, or a second look
    expected = {(cell, s) for cell, ss in seeds.items() for s in ss}
    assert_each_once(trials, expected)
    assert study.user_attrs["spec"]["max_seeds"] == 4
