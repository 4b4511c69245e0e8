"""The same study started from many processes at once: every cell x seed once, no broken
store, no traceback (real journal file, real PostgreSQL, real MLflow SQLite store).

The processes wait at a barrier (tests/barrier_cli.py) after their imports, so that they
reach their first store access within milliseconds of one another. Each scenario runs
once; ``GCT_ABLATE_TEST_ROUNDS=N`` repeats each N times (races show up by repetition).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY, assert_each_once, assert_mlflow_tree, cli_env, run_cli, wait_for

from gct_ablate.storage import open_storage

BARRIER = Path(__file__).with_name("barrier_cli.py")
GRID = ["--vary", "p", "--levels", "p=1,2", "--seeds", "2", *TINY, "--workers", "1"]
EXPECTED = {(f"p={p}", s) for p in ("1", "2") for s in (0, 1)}
ROUNDS = int(os.environ.get("GCT_ABLATE_TEST_ROUNDS", "1"))  # more: GCT_ABLATE_TEST_ROUNDS=5
pytestmark = pytest.mark.slow


def start_together(commands: list[list[str]], cwd: Path, delays: list[float] | None = None
                   ) -> list[tuple[int, str]]:
    """Start every command, release them together (or after ``delays`` seconds each, in
    that order), wait for all; (exit code, output) per command."""
    release = cwd / "release"
    ready = [cwd / f"ready-{i}" for i in range(len(commands))]
    logs = [cwd / f"log-{i}.txt" for i in range(len(commands))]
    procs = []
    for args, flag, log in zip(commands, ready, logs, strict=True):
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, str(BARRIER), str(flag), str(release), *args], cwd=cwd,
                env={**cli_env(), "PYTHONPATH": str(Path(__file__).parents[1])},
                stdout=out, stderr=subprocess.STDOUT))
    try:
        wait_for(lambda: all(f.exists() for f in ready), 300, "every process at the barrier")
        if delays is None:
            release.touch()
        else:
            start = time.monotonic()
            for proc_delay in delays:
                time.sleep(max(0.0, start + proc_delay - time.monotonic()))
            release.touch()
        for proc in procs:
            proc.wait(timeout=240)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [(p.returncode, log.read_text(errors="replace")) for p, log in
            zip(procs, logs, strict=True)]


def assert_clean_exits(outcomes: list[tuple[int, str]]) -> None:
    for code, output in outcomes:
        assert code == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]


def check_stores(storage: str | None, out: Path, uri: str, name: str) -> None:
    """Each cell x seed COMPLETE once, one parent run with a child per trial, and the stores
    still open and summarise."""
    opened = open_storage(storage, out)
    trials = optuna.load_study(study_name=name, storage=opened).get_trials()
    assert_each_once(trials, EXPECTED)
    assert_mlflow_tree(uri, name, trials)
    args = ["summary", name, "--out", str(out)] + (["--storage", storage] if storage else [])
    result = run_cli(args, out.parent)
    assert result.returncode == 0, result.stderr
    assert "p=1" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_four_runs_at_once_on_a_fresh_local_folder(tmp_path: Path, round_: int) -> None:
    out = tmp_path / "out"
    run = ["run", *GRID, "--study", "together", "--out", str(out)]
    assert_clean_exits(start_together([run] * 4, tmp_path))
    check_stores(None, out, f"sqlite:///{out / 'mlflow.db'}", "together")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_four_runs_at_once_on_a_fresh_postgres_database(tmp_path: Path, pg_url: str,
                                                        round_: int) -> None:
    out = tmp_path / "out"
    run = ["run", *GRID, "--study", "together", "--out", str(out), "--storage", pg_url]
    assert_clean_exits(start_together([run] * 4, tmp_path))
    check_stores(pg_url, out, f"sqlite:///{out / 'mlflow.db'}", "together")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_run_and_three_workers_in_random_order(tmp_path: Path, pg_url: str,
                                                 round_: int) -> None:
    out = tmp_path / "run"
    run = ["run", *GRID, "--study", "array", "--out", str(out), "--storage", pg_url]
    workers = [["worker", "array", "--storage", pg_url, "--threads", "1", "--wait", "120",
                "--out", str(tmp_path / f"w{i}")] for i in range(3)]
    commands = [run, *workers]
    random.Random(round_).shuffle(commands)
    outcomes = start_together(commands, tmp_path, delays=[0.0, 0.4, 0.8, 1.2])
    assert_clean_exits(outcomes)
    check_stores(pg_url, out, f"sqlite:///{out / 'mlflow.db'}", "array")


def test_a_second_out_folder_on_the_same_storage_is_refused_before_training(
        tmp_path: Path, pg_url: str) -> None:
    first = run_cli(["run", *GRID, "--study", "two-outs", "--seeds", "1", "--out",
                     str(tmp_path / "a"), "--storage", pg_url], tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli(["run", *GRID, "--study", "two-outs", "--seeds", "2", "--out",
                      str(tmp_path / "b"), "--storage", pg_url], tmp_path)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert str(tmp_path / "a" / "mlflow.db") in lines[0]
    assert str(tmp_path / "b" / "mlflow.db") in lines[0] and "--tracking-uri" in lines[0]
    trials = optuna.load_study(study_name="two-outs",
                               storage=open_storage(pg_url, tmp_path)).get_trials()
    assert len(trials) == 2  # nothing queued or trained for the refused start
    assert not (tmp_path / "b" / "mlflow.db").exists()
