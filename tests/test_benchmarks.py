"""benchmarks.gpu_check: its dry run on the CPU goes through every section and reports it."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("gct_op", "train_step", "trial", "workers")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_gpu_check_dry_run_reports_every_section(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run",
                           "--out", str(out)], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "gpu_check.txt").read_text()
    assert text.strip() in proc.stdout  # the saved report is what was printed
    for section in (*SECTIONS, "verdict"):
        assert f"== {section}:" in text
    data = json.loads((out / "gpu_check.json").read_text())
    assert set(SECTIONS) | {"meta", "verdict", "overall"} <= set(data)
    assert data["meta"]["dry_run"] is True
    assert {row["dtype"] for row in data["gct_op"]} == {"fp32", "bf16"}
    assert all(row["max_err"] < 0.02 for row in data["gct_op"])
    steps = {row["model"]: row for row in data["train_step"]}
    assert set(steps) == {"resnet20", "resnet50"}
    assert all({"plain", "gct", "se"} <= set(row["ms"]) for row in steps.values())
    assert data["trial"]["status"] == "ok" and data["trial"]["device"] == "cpu"
    assert [row["workers"] for row in data["workers"]] == [1, 2]
    assert all(row["trials_per_s"] > 0 for row in data["workers"])
    lines = text[text.index("== verdict:"):].splitlines()[1:]
    checks = [line for line in lines if line.startswith("dry run (CPU)")]
    assert len(checks) == len(data["verdict"]) >= 5
    assert all(v["status"] == "dry run (CPU)" for v in data["verdict"])
    assert not [line for line in lines if line.startswith(("PASS", "FAIL"))]
    names = " ".join(v["check"] for v in data["verdict"])
    for what in ("gct_op", "train_step resnet20", "train_step resnet50", "trial", "workers"):
        assert what in names


def test_gpu_check_without_cuda_asks_for_the_dry_run(tmp_path):
    """CUDA_VISIBLE_DEVICES="" hides any GPU: without --dry-run it refuses, writing nothing."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out",
                           str(tmp_path)], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "--dry-run" in proc.stderr and not list(tmp_path.iterdir())
