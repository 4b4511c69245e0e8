"""Bounds and careless input, each one line and exit 2 before anything is stored or trained:
option ranges (Typer's own too), worker counts, tensors larger than the memory, values out
of range, files that are not what they should be, repeated options, and names that would
become bad paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from gct_ablate.analysis._figures import png_path
from gct_ablate.analysis.report import report_file
from gct_ablate.cli import app
from gct_ablate.worker import Interrupted, stop_reason

TINY = ["--set", "epochs=1", "--threads", "1", "--workers", "1"]
RUN = ["run", "--vary", "p", "--levels", "p=1,2", "--seeds", "1"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    text = tmp / "weights.txt"
    text.write_text("this is text, not weights\n")
    nested = tmp / "nested.toml"
    nested.write_text('vary = ["p"]\nseeds = ' + "[" * 600 + "1" + "]" * 600 + "\n")
    many = 4 * (os.cpu_count() or 1) + 1
    return {
        "--seeds 0": ([*RUN[:-1], "0"], "Invalid value for '--seeds'"),
        "--workers 0": ([*RUN, "--workers", "0"], "Invalid value for '--workers'"),
        "worker --workers 0": (["worker", "x", "--workers", "0"],
                               "Invalid value for '--workers'"),
        "unknown option": ([*RUN, "--bogus"], "No such option: --bogus"),
        "too many workers": ([*RUN, "--workers", str(many)],
                             f"--workers {many} is more than 4 per core"),
        "image_size beyond memory": ([*RUN, "--set", "image_size=8192"],
                                     "digits at image_size=8192: 1,797 images x 1 x 8192x8192 "
                                     "uint8 = "),
        "label_smoothing 5": ([*RUN, "--set", "label_smoothing=5"],
                              "invalid label_smoothing '5'; must be in [0, 1)"),
        "train --label-smoothing 5": (["train", "--label-smoothing", "5"],
                                      "invalid label_smoothing '5'; must be in [0, 1)"),
        "repeated --levels": ([*RUN, "--levels", "p=3"], "--levels p given twice (1,2 and 3)"),
        "nested study file": (["run", str(nested)], "nested too deeply to read"),
        "leading dash": ([*RUN, "--study", "-x"], "invalid study name '-x'"),
        "train --init-from text": (["train", "--epochs", "1", "--init-from", str(text)],
                                   f"{text}: not a torch state dict"),
        "evaluate text": (["evaluate", str(text)], f"{text}: not a torch state dict"),
        "study init_from text": ([*RUN, "--set", f"training=finetune-joint,init_from={text}"],
                                 f"{text}: not a torch state dict"),
        "status, mistyped --out": (["status", "s"], "no study storage"),
        "too costly": (["run", "--vary", "p,norm,activation,remove,init,placement",
                        "--study", "big"], "30,240 trials to run"),
    }


def test_each_case_is_one_line_exit_2_and_leaves_no_store(tmp_path):
    problems = []
    for name, (args, message) in _cases(tmp_path).items():
        out = tmp_path / "out" / name.replace(" ", "_").replace("/", "_")
        extra = TINY if args[0] == "run" and "--workers" not in args else []
        result = invoke(*args, *extra, "--out", str(out)) if args[0] in (
            "run", "status") else invoke(*args)
        lines = result.stderr.strip().splitlines()
        if (result.exit_code != 2 or len(lines) != 1 or not lines[0].startswith("Error: ")
                or message not in lines[0] or "Traceback" in result.output):
            problems.append(f"{name}: exit {result.exit_code}, {result.output!r}")
        made = [p.name for p in out.rglob("*")] if out.exists() else []
        if any(n in ("optuna.journal", "mlflow.db") for n in made):
            problems.append(f"{name}: left {made} behind")
    assert not problems, "\n".join(problems)


def test_single_class_image_folder_is_refused(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(
                tmp_path / split / "cat" / f"{i}.png")
    result = invoke("train", "--dataset", "imagefolder", "--data-dir", str(tmp_path),
                    "--epochs", "1")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "1 class folder(s) (cat); classification needs at least two" in lines[0]


def test_stop_reasons_are_never_empty():
    assert stop_reason(KeyboardInterrupt()) == "Ctrl-C"
    assert stop_reason(Interrupted("signal 15")) == "signal 15"
    assert stop_reason(Interrupted()) == "Interrupted"


def test_long_and_stored_names_make_safe_paths(tmp_path):
    """A 200-character study name (valid) made a figure name over the 255 bytes file systems
    allow; a name stored by an older version (`../../escaped`) wrote its report outside."""
    name = "n" * 200
    path = png_path(None, tmp_path, f"{name}-gates", "p=2 activation=tanh", True)
    assert path.parent == tmp_path and len(path.name) <= 120 and path.suffix == ".png"
    path.write_bytes(b"png")
    other = png_path(None, tmp_path, f"{name}-gates", "p=2 activation=sigmoid", True)
    assert other != path
    for stored in ("../../escaped", "/etc/x", "a/b", ".."):
        report = report_file(tmp_path, stored)
        assert report.parent == tmp_path and not report.name.startswith(".")


def test_evaluate_a_network_saved_by_train(tmp_path):
    """The reported case: `train --epochs 1 --save g.pt && evaluate g.pt` crashed on CPU."""
    saved = tmp_path / "g.pt"
    trained = invoke("train", "--epochs", "1", "--train-size", "128", "--val-size", "64",
                     "--threads", "1", "--device", "cpu", "--save", str(saved))
    assert trained.exit_code == 0, trained.output
    result = invoke("evaluate", str(saved), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "val top-1" in result.output and "Traceback" not in result.output
