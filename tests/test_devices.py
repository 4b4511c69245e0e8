"""Worker placement over GPUs (pure, no GPU needed) and the device each trial records."""

import collections
import math
import os

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow import MlflowClient
from rich.console import Console
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.devices import (
    GpuError,
    gpu_index,
    parse_gpus,
    place_workers,
    visible_gpus,
    worker_devices,
)
from gct_ablate.errors import UsageError
from gct_ablate.grid import prepare_study
from gct_ablate.runner import run_workers
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.storage import open_storage
from gct_ablate.tracking import Tracker, default_tracking_uri
from gct_ablate.worker import WorkerOptions

runner = CliRunner()
TINY = ["--set", "epochs=1", "--threads", "1", "--no-save-models"]


# ------------------------------------------------------------------------ placement
@pytest.mark.parametrize("n_gpus", [1, 2, 3])
@pytest.mark.parametrize("n_workers", range(1, 9))
def test_workers_go_round_robin_over_the_gpus(n_workers, n_gpus):
    devices = place_workers(n_workers, tuple(range(n_gpus)))
    assert devices == [f"cuda:{i % n_gpus}" for i in range(n_workers)]
    counts = collections.Counter(devices)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len(counts) == min(n_workers, n_gpus)  # no GPU idle while another has two


def test_placement_uses_the_chosen_gpus_in_order_and_cpu_without_any():
    assert place_workers(5, (2, 0)) == ["cuda:2", "cuda:0", "cuda:2", "cuda:0", "cuda:2"]
    assert place_workers(3, ()) == ["cpu", "cpu", "cpu"]
    with pytest.raises(UsageError):
        place_workers(0, (0,))


@given(n_workers=st.integers(1, 64), gpus=st.lists(st.integers(0, 15), min_size=1,
                                                    max_size=8, unique=True))
def test_every_gpu_gets_floor_or_ceil_of_its_share(n_workers, gpus):
    counts = collections.Counter(place_workers(n_workers, gpus))
    share = n_workers / len(gpus)
    assert sum(counts.values()) == n_workers
    assert set(counts) <= {f"cuda:{g}" for g in gpus}
    for g in gpus:
        assert counts[f"cuda:{g}"] in (math.floor(share), math.ceil(share))


# ------------------------------------------------------------- CUDA_VISIBLE_DEVICES
@pytest.mark.parametrize("env, count, expected", [
    ({}, 4, (0, 1, 2, 3)),
    ({}, 0, ()),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, 2, (0, 1)),
    ({"CUDA_VISIBLE_DEVICES": "1"}, 1, (0,)),
    ({"CUDA_VISIBLE_DEVICES": ""}, 4, ()),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, 4, ()),
    ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, 4, (0,)),  # CUDA stops at the first invalid entry
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 2, (0, 1)),  # the driver has only two
    ({"CUDA_VISIBLE_DEVICES": "GPU-8a1b,GPU-77c2"}, 2, (0, 1)),
])
def test_visible_gpus_are_positions_in_the_visible_list(env, count, expected):
    assert visible_gpus(env, count) == expected


def test_worker_devices_respect_the_visible_list_and_the_device_option():
    env = {"CUDA_VISIBLE_DEVICES": "4,6,7"}
    assert worker_devices("auto", 4, None, 3, env) == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert worker_devices("cuda", 3, "0,2", 3, env) == ["cuda:0", "cuda:2", "cuda:0"]
    assert worker_devices("auto", 2, [1], 3, env) == ["cuda:1", "cuda:1"]
    assert worker_devices("cuda:1", 2, None, 3, env) == ["cuda:1", "cuda:1"]
    assert worker_devices("cpu", 2, None, 3, env) == ["cpu", "cpu"]
    # no GPU: the CPU default is left exactly as it was
    assert worker_devices("auto", 3, None, 0, {}) == ["auto"] * 3
    assert worker_devices("auto", 2, None, 4, {"CUDA_VISIBLE_DEVICES": ""}) == ["auto"] * 2


@pytest.mark.parametrize("text, count, message", [
    ("a,1", 2, "invalid GPU index 'a'"),
    ("-1", 2, "invalid GPU index '-1'"),
    ("0,0", 2, "GPU 0 given twice"),
    ("", 2, "invalid --gpus"),
    ("0,,1", 2, "invalid --gpus"),
    ("2", 2, "GPU 2 of --gpus '2' is not visible; this machine shows 2 GPU(s) (0-1)"),
    ("0", 0, "no visible CUDA GPU"),
])
def test_bad_gpus_are_one_line_usage_errors(text, count, message):
    with pytest.raises(GpuError) as err:
        worker_devices("auto", 2, text, count, {})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gpus_do_not_go_with_an_explicit_device():
    with pytest.raises(GpuError, match="does not go with --device cpu"):
        worker_devices("cpu", 2, "0", 2, {})
    assert parse_gpus(" 3, 1 ") == (3, 1)
    assert gpu_index("cuda:2") == 2 and gpu_index("cuda") is None and gpu_index("cpu") is None


def test_not_visible_names_cuda_visible_devices():
    with pytest.raises(GpuError, match="under CUDA_VISIBLE_DEVICES=5"):
        worker_devices("auto", 1, "1", 1, {"CUDA_VISIBLE_DEVICES": "5"})


# ------------------------------------------------------------------- command line
@pytest.mark.parametrize("gpus", ["a,1", "-1", "0,0", "0"])
@pytest.mark.parametrize("command", ["run", "worker"])
def test_cli_refuses_bad_gpus_with_one_line_exit_2(tmp_path, command, gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a machine without GPUs, whatever runs it
    target = ["--vary", "p", "--levels", "p=1,2"] if command == "run" else ["some-study"]
    result = runner.invoke(app, [command, *target, "--gpus", gpus, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "gpus" in lines[0].lower()
    assert not (tmp_path / "optuna.journal").exists()  # refused before anything is stored


def test_a_cpu_run_records_the_device_on_trials_mlflow_and_status(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--vary", "p", "--levels", "p=2", "--seeds", "2",
                                 "--workers", "2", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="vary-p", storage=open_storage(None, out))
    assert [t.user_attrs["device"] for t in study.trials] == ["cpu", "cpu"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    for t in study.trials:
        assert client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["device"] == "cpu"
    status = runner.invoke(app, ["status", "vary-p", "--out", str(out)])
    assert status.exit_code == 0, status.output
    assert "workers" in status.output and "device" in status.output
    rows = [line for line in status.output.splitlines() if " cpu " in f" {line} "]
    pids = {str(t.user_attrs["pid"]) for t in study.trials}
    assert len(rows) == len(pids) and all(any(p in row for p in pids) for row in rows)


# ---------------------------------------------------------------- each worker its device
def test_each_worker_process_trains_on_its_own_device(tmp_path):
    """Two workers, one trial each: this process's on "cpu", the spawned one's on "meta" (a
    device that holds no data, so its trial fails): each trial records its worker's device."""
    base = TrialConfig(threads=1, save_model=False)
    spec = StudySpec(vary=("p",), levels={"p": ("1", "2")}, fixed={"epochs": 1}, seeds=2,
                     name="placed", base=base)
    tracker = Tracker(default_tracking_uri(tmp_path), artifact_root=tmp_path / "art")
    prepare_study(spec, open_storage(None, tmp_path), tracker)
    opts = WorkerOptions(study_name="placed", storage=None, out_dir=str(tmp_path), base=base,
                         max_trials=1)
    run_workers(opts, 2, 1, Console(quiet=True), devices=["cpu", "meta"])
    study = optuna.load_study(study_name="placed", storage=open_storage(None, tmp_path))
    ran = {t.user_attrs["device"]: t for t in study.trials if "device" in t.user_attrs}
    assert set(ran) == {"cpu", "meta"}
    assert ran["cpu"].state.name == "COMPLETE" and ran["cpu"].user_attrs["pid"] == os.getpid()
    assert ran["meta"].state.name == "FAIL" and ran["meta"].user_attrs["pid"] != os.getpid()
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    for device, t in ran.items():
        assert client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["device"] == device
