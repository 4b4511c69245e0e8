"""gct_ablate.store owns what a study stores: keys, records, checks, private library calls."""

import re
from pathlib import Path

import optuna
import pytest

from gct_ablate.errors import StudyNotFound, UsageError
from gct_ablate.grid import prepare_study
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.storage import open_storage
from gct_ablate.store import keys
from gct_ablate.store.open import find_study, open_study, verify
from gct_ablate.store.records import stored_study, stored_trials
from gct_ablate.tracking import Tracker, default_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gct_ablate"
# Optuna's attribute access and private parts, MLflow's private parts and tag names
PRIVATE = re.compile(
    r"user_attrs|system_attrs|set_user_attr|\._storage\b|\._trial_id|\._study_id|\._backend"
    r"|_file_path|fixed_params|fail_reason|alembic_|SqlAlchemyStore|_get_latest_schema"
    r"|MLFLOW_LOGGED_ARTIFACTS|mlflow\.loggedArtifacts|mlflow\.experimentKind"
    r"|gct_ablate\.role|gct_ablate\.fingerprint|optuna_trial_number|\.artifact_uri\b"
    r"|load_study\(")  # a study is loaded by store.open alone
STORED_KEYS = sorted(v for k, v in vars(keys).items()  # distinctive enough to grep for
                     if k.isupper() and isinstance(v, str) and ("_" in v or "." in v)
                     and v != "tracking_uri")  # also a parameter name everywhere


def test_no_module_outside_store_names_an_attribute_key_or_a_private_part():
    quoted = re.compile("|".join(rf"[\"']{re.escape(k)}[\"']" for k in STORED_KEYS))
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        if path.relative_to(ROOT).parts[:2] == ("gct_ablate", "store"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line) or quoted.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert STORED_KEYS and not found, "\n".join(found)


def test_records_read_back_what_the_study_layer_wrote(tmp_path):
    spec = StudySpec(vary=("p",), levels={"p": ("1", "2")}, seeds=1, name="rec",
                     base=TrialConfig(threads=1))
    storage = open_storage(None, tmp_path)
    prepared = prepare_study(spec, storage, Tracker(default_tracking_uri(tmp_path)))
    study = stored_study(prepared.study)
    assert (study.name, study.fingerprint, study.reference_cell) == (
        "rec", spec.fingerprint(), "p=2")
    assert study.queued and study.made_by_tool and study.maximize is True
    assert study.experiment_id and study.parent_run_id and study.tracking_uri
    assert study.schedule == {"seeds": 1} and set(study.recipe) == {"p=1", "p=2"}
    trials = stored_trials(prepared.study)
    assert sorted(t.key for t in trials) == [("p=1", 0), ("p=2", 0)]
    assert {t.state for t in trials} == {"WAITING"} and trials[0].run_id is None


def test_verify_refuses_another_grid_and_a_study_not_made_by_the_tool(tmp_path):
    spec = StudySpec(vary=("p",), levels={"p": ("1", "2")}, seeds=1, name="v")
    storage = open_storage(None, tmp_path)
    study = prepare_study(spec, storage, Tracker(default_tracking_uri(tmp_path))).study
    assert verify(study, spec).fingerprint == spec.fingerprint()
    other = StudySpec(vary=("p",), levels={"p": ("1", "3")}, seeds=1, name="v")
    with pytest.raises(UsageError, match=r"^study 'v' exists with a different grid \(vary=p"):
        verify(study, other)
    foreign = optuna.create_study(study_name="foreign", storage=storage)
    assert not verify(foreign).made_by_tool  # empty: may still become a gct-ablate study
    with pytest.raises(UsageError, match="was not made by gct-ablate"):
        verify(foreign, empty_ok=False)
    foreign.enqueue_trial({})
    with pytest.raises(UsageError, match="^study 'foreign' exists and was not made by"):
        verify(foreign)


def test_open_study_finds_refuses_and_names_what_is_there(tmp_path):
    spec = StudySpec(vary=("p",), levels={"p": ("1", "2")}, seeds=1, name="o")
    storage = open_storage(None, tmp_path)
    assert find_study(storage, "o") is None
    prepare_study(spec, storage, Tracker(default_tracking_uri(tmp_path)))
    assert open_study(storage, "o", spec).study_name == "o"
    with pytest.raises(StudyNotFound, match=r"^no study named 'x' in this storage; existing: o$"):
        open_study(storage, "x")
    other = StudySpec(vary=("p",), levels={"p": ("1", "3")}, seeds=1, name="o")
    with pytest.raises(UsageError, match="exists with a different grid"):
        find_study(storage, "o", other)
