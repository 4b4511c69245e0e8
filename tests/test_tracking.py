"""The MLflow side: the local store created whole once, broken stores refused in one line,
studies kept to the store they were created in."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, wait_for
from conftest import run_cli as run_process
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.errors import UsageError
from gct_ablate.tracking import Tracker, check_tracking, prepare_local_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The command line in this process (what is checked is its refusal, not a process
    boundary): exit code, stdout and stderr as a finished process would give them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(cwd)
        result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback: the test fails with it
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_a_new_local_store_is_created_whole_and_reused(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    check_tracking(f"sqlite:///{db}")
    assert db.exists()
    assert [p.name for p in tmp_path.iterdir() if "creating" in p.name] == []
    tracker = Tracker(f"sqlite:///{db}", tmp_path / "mlartifacts")
    assert tracker.experiment("x") == tracker.experiment("x")
    before = db.stat().st_mtime_ns
    prepare_local_store(db)  # already whole: opened, not re-created
    assert db.stat().st_mtime_ns == before


def test_a_crash_while_creating_leaves_no_store_behind(tmp_path: Path) -> None:
    """Killed mid-migration: only a temporary file was ever written, never mlflow.db."""
    db = tmp_path / "mlflow.db"
    code = ("import sys; from pathlib import Path; from gct_ablate.tracking import "
            f"prepare_local_store; prepare_local_store(Path({str(db)!r}))")
    child = subprocess.Popen([sys.executable, "-c", code],
                             env={"PYTHONPATH": str(Path(__file__).parents[1])})
    wait_for(lambda: list(tmp_path.glob(".mlflow.db.creating-*")), 120, "the migration")
    time.sleep(0.5)  # mid-migration (it takes seconds)
    child.kill()
    child.wait()
    assert child.returncode != 0 and not db.exists()
    prepare_local_store(db)  # the next start creates it
    Tracker(f"sqlite:///{db}").experiment("y")


def _break(db: Path, sql: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql)


@pytest.mark.parametrize("damage, expected", [
    ("CREATE TABLE _alembic_tmp_tags (x INTEGER)", "half-migrated.*_alembic_tmp_tags.*DROP TABLE"),
    ("UPDATE alembic_version SET version_num = 'bf29a5ff90ea'", "schema bf29a5ff90ea.*db upgrade"),
])
def test_a_damaged_store_is_refused_in_one_line(tmp_path: Path, damage: str, expected: str
                                               ) -> None:
    db = tmp_path / "mlflow.db"
    prepare_local_store(db)
    _break(db, damage)
    with pytest.raises(UsageError, match=expected):
        check_tracking(f"sqlite:///{db}")
    result = run_cli(["run", "--vary", "p", "--levels", "p=1", "--seeds", "1", *TINY,
                      "--out", str(tmp_path)], tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "optuna.journal").exists() or b"vary-p" not in (
        tmp_path / "optuna.journal").read_bytes()  # refused before any study was created


def test_a_study_whose_parent_run_is_gone_is_refused_at_start(tmp_path: Path) -> None:
    args = ["run", "--vary", "p", "--levels", "p=1", "--seeds", "1", *TINY, "--out",
            str(tmp_path), "--study", "gone"]
    assert run_cli(args, tmp_path).returncode == 0
    (tmp_path / "mlflow.db").unlink()  # the tracking store deleted, the journal kept
    again = run_process([*args, "--seeds", "2"], tmp_path)  # a new process: no engine cached
    assert again.returncode == 2, again.stderr
    assert "parent run" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_a_worker_pointing_at_another_store_is_refused(tmp_path: Path) -> None:
    args = ["run", "--vary", "p", "--levels", "p=1", "--seeds", "1", *TINY, "--out",
            str(tmp_path), "--study", "here"]
    assert run_cli(args, tmp_path).returncode == 0
    other = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    result = run_cli(["worker", "here", "--out", str(tmp_path), "--tracking-uri", other,
                      "--wait", "0"], tmp_path)
    assert result.returncode == 2
    assert "is tracked at" in result.stderr and other in result.stderr
