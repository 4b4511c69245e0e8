"""The cost check: estimated from calibration or from the study's finished trials; above the
limits `run` asks on a terminal, refuses without one (exit 2) unless --yes, and queues
nothing until it may."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import optuna
import pytest
from conftest import TINY, cli_env
from optuna.storages.journal import JournalFileBackend, JournalStorage
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.cost import CostLimits, TooCostly, calibrate, check_cost, estimate_cost
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.train import train_eval

BIG = ["--vary", "p,norm,activation,remove,init,placement"]  # 10,080 cells
SMALL = ["--vary", "p", "--levels", "p=1,2", "--seeds", "1"]


def invoke(*args: str):
    return CliRunner().invoke(app, ["run", *args, *TINY, "--workers", "1"])


def studies(out) -> list[str]:
    path = out / "optuna.journal"
    if not path.exists():
        return []
    return optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(path))))


def test_calibration_is_close_to_a_real_epoch():
    cfg = TrialConfig(epochs=2, threads=1, save_model=False)
    estimate = calibrate(cfg, threads=1)
    start = time.perf_counter()
    result = train_eval(cfg)
    per_epoch = (time.perf_counter() - start) / result["epochs_done"]
    assert per_epoch / 4 < estimate < per_epoch * 4, (estimate, per_epoch)


def test_estimate_and_limits():
    spec = StudySpec(vary=("p", "norm"), fixed={"epochs": 3}, base=TrialConfig(threads=1))
    est = estimate_cost(spec, workers=2, limits=CostLimits(trials=100, hours=1e6))
    assert (est.trials, est.cells, est.epochs, est.ofat_cells) == (72, 24, 216, 9)
    assert est.source.startswith("calibrated here: resnet20 on digits")
    assert est.hours == pytest.approx(216 * est.epoch_seconds / 2 / 3600)
    assert not est.over
    check_cost(est)  # below the limits: nothing happens, nothing is asked
    low = estimate_cost(spec, workers=2, limits=CostLimits(trials=71))
    assert low.over
    asked = []
    check_cost(low, lambda e: asked.append(e) or True)
    assert asked == [low]
    with pytest.raises(TooCostly) as err:
        check_cost(low, lambda e: False)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("72 trials to run (24 cells x 3 seeds) x 3 epoch(s) at ")
    assert str(err.value).endswith("--design ofat of the same factors: 9 cells, 27 trials)")


def test_the_big_crossing_stops_before_queueing_anything(tmp_path):
    result = invoke(*BIG, "--out", str(tmp_path))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: 30,240 trials to run (10,080 cells x 3 seeds) x 1 "
                               "epoch(s) at ")
    assert "(calibrated here: resnet20 on digits, 1 thread(s))" in lines[0]
    assert lines[0].endswith("not started, nothing was queued: pass --yes to run it anyway, "
                             "or --design ofat of the same factors: 24 cells, 72 trials")
    assert studies(tmp_path) == [] and not (tmp_path / "mlflow.db").exists()


def test_above_a_lowered_limit_yes_runs_it_then_its_trials_are_the_measure(tmp_path):
    refused = invoke(*SMALL, "--ask-above-trials", "1", "--out", str(tmp_path))
    assert refused.exit_code == 2 and studies(tmp_path) == []
    ran = invoke(*SMALL, "--ask-above-trials", "1", "--yes", "--out", str(tmp_path))
    assert ran.exit_code == 0, ran.output
    assert "2 cells x 1 seeds = 2 trials (0 done, 2 queued now)" in ran.stdout

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.load_study(study_name="vary-p", storage=storage)
    seconds = [t.user_attrs["metrics"]["seconds"] for t in study.trials]
    spec = StudySpec(vary=("p",), levels={"p": ("1", "2")}, fixed={"epochs": 1}, seeds=3)
    est = estimate_cost(spec, study)
    assert est.source == "measured on this study's finished trials"
    assert est.epoch_seconds == pytest.approx(sum(seconds) / 2)
    assert est.trials == 4  # seeds 1 and 2 of both cells; seed 0 is done


def test_on_a_terminal_it_asks_and_no_queues_nothing(tmp_path):
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gct_ablate", "run", *SMALL, *TINY, "--workers", "1",
         "--ask-above-trials", "1", "--out", str(tmp_path)],
        stdin=child, stdout=child, stderr=child, cwd=tmp_path, env=cli_env())
    os.close(child)
    seen = b""
    try:
        deadline = time.monotonic() + 180
        while b"Queue and run it?" not in seen and time.monotonic() < deadline:
            if select.select([main], [], [], 1)[0]:
                seen += os.read(main, 4096)
        os.write(main, b"n\n")
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    text = seen.decode(errors="replace")
    assert "Large study: 2 trials to run (2 cells x 1 seeds)" in text
    assert "Smaller: --design ofat of the same factors: 2 cells, 2 trials" in text
    assert "Not started; nothing was queued." in text
    assert studies(tmp_path) == []
