"""Every call the tool makes below Optuna's and MLflow's public APIs (gct_ablate.store.
_optuna and _mlflow), on the installed versions: a release that changes one fails here,
by name, before it fails a study."""

import json
import sqlite3

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from gct_ablate.storage import open_storage
from gct_ablate.store import _mlflow, _optuna


@pytest.fixture
def journal_study(tmp_path):
    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0}, user_attrs={"cell": "x=1", "seed": 0})
    return study, storage, tmp_path


def test_optuna_private_calls(journal_study):
    study, storage, folder = journal_study
    assert _optuna.storage_of(study) is storage
    assert _optuna.journal_path(storage) == str(folder / "optuna.journal")
    assert _optuna.rdb_storage(storage) is None and _optuna.heartbeat_interval(study) is None
    trial_id = _optuna.pop_waiting(study)
    assert trial_id is not None and _optuna.pop_waiting(study) is None
    assert optuna.Trial(study, trial_id).suggest_float("x", 0.0, 2.0) == 1.0
    running = _optuna.get_trial(study, trial_id)
    assert running.state == TrialState.RUNNING
    assert _optuna.fail_running(study, running, "lost")
    failed = _optuna.get_trial(study, trial_id)
    assert failed.state == TrialState.FAIL and failed.user_attrs["status_reason"] == "lost"
    assert not _optuna.fail_running(study, failed, "again")  # no longer running
    study.add_trial(_optuna.waiting_copy(failed, {"cell": "x=1", "seed": 0}))
    copy = study.get_trials(states=(TrialState.WAITING,))[0]
    assert _optuna.fail_reason(copy) is None
    popped = optuna.Trial(study, _optuna.pop_waiting(study))
    assert popped.suggest_float("x", 0.0, 2.0) == 1.0  # the copy's fixed parameter


def test_optuna_rdb_heartbeat_calls(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=5,
                                         grace_period=10)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    assert _optuna.rdb_storage(storage) is storage
    assert _optuna.heartbeat_interval(study) == 5
    _optuna.record_heartbeat(study, trial._trial_id)
    storage.set_trial_system_attr(trial._trial_id, "fail_reason", "stale")
    assert _optuna.fail_reason(study.trials[0]) == "stale"  # the key Optuna writes


def test_mlflow_private_calls(tmp_path):
    db = tmp_path / "mlflow.db"
    _mlflow.create_sqlite_store(db, (tmp_path / "art").as_uri())
    latest = _mlflow.latest_schema()
    assert latest and _mlflow.schema_version(db) == latest
    assert _mlflow.interrupted_migrations(db) == []
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE _alembic_tmp_runs (x)")
    assert _mlflow.interrupted_migrations(db) == ["_alembic_tmp_runs"]
    client = MlflowClient(f"sqlite:///{db}")
    run = client.create_run(client.create_experiment("e", (tmp_path / "art").as_uri()))
    client.log_table(run.info.run_id, {"a": [1]}, "t/one.json")  # MLflow's own listing
    _mlflow.list_table(client, run.info.run_id, "t/two.json")
    _mlflow.list_table(client, run.info.run_id, "t/two.json")  # listed once
    tags = client.get_run(run.info.run_id).data.tags
    assert [a["path"] for a in json.loads(tags["mlflow.loggedArtifacts"])] == [
        "t/one.json", "t/two.json"]
