"""Designs: the full grid, one factor at a time, a generalized subset (screening) design;
in StudySpec, study files, the fingerprint, and end to end through `gct-ablate run`."""

from __future__ import annotations

import collections
import hashlib
import itertools
import json

import pytest
from conftest import TINY
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.designs import MAX_CELLS, parse_design, summary_line
from gct_ablate.errors import SpecError
from gct_ablate.spec import StudySpec, cell_id
from gct_ablate.study_file import build_spec, load_study_file

THREE = ("p", "norm", "activation")
SIX = ("p", "norm", "activation", "remove", "init", "placement")


@pytest.mark.parametrize("raw,canonical", [
    (None, "full"), ("full", "full"), (" OFAT ", "ofat"), ("gsd=4", "gsd=4"),
    ("GSD = 04", "gsd=4")])
def test_parse_design(raw, canonical):
    assert parse_design(raw) == canonical


@pytest.mark.parametrize("raw", ["fractional", "gsd", "gsd=1", "gsd=x", "gsd=²", "ofat=2", ""])
def test_unknown_design_is_one_line(raw):
    with pytest.raises(SpecError, match=r"unknown design .*; valid: full, ofat, gsd=R") as err:
        StudySpec(vary=("p",), design=raw)
    assert "\n" not in str(err.value)


def test_full_design_is_the_crossing():
    spec = StudySpec(vary=THREE)
    axes = [[(n, lv) for lv in spec.levels[n]] for n in THREE]
    assert spec.cells() == [tuple(c) for c in itertools.product(*axes)]
    assert len(spec.cells()) == 6 * 4 * 4


def test_ofat_is_the_reference_then_one_change_at_a_time():
    spec = StudySpec(vary=THREE, design="ofat")
    cells = spec.cells()
    assert len(cells) == 1 + 5 + 3 + 3 == 12
    reference = spec.reference_cell()
    assert cells[0] == reference == (("p", "2"), ("norm", "l2"), ("activation", "tanh"))
    changed = []
    for cell in cells[1:]:
        diff = [(a, b) for a, b in zip(reference, cell, strict=True) if a != b]
        assert len(diff) == 1  # exactly one factor away from the reference
        changed.append(diff[0][1])
    expected = [(n, lv) for n in THREE for lv in spec.levels[n] if lv != dict(reference)[n]]
    assert changed == expected  # every other level once, in the order given
    assert len(spec.trials()) == 12 * 3


def test_ofat_reference_is_the_first_level_when_the_paper_level_is_absent():
    spec = StudySpec(vary=("p", "norm"), levels={"p": ("inf", "1")}, design="ofat")
    assert spec.cells() == [(("p", "inf"), ("norm", "l2")), (("p", "1"), ("norm", "l2")),
                            (("p", "inf"), ("norm", "l1")), (("p", "inf"), ("norm", "layer")),
                            (("p", "inf"), ("norm", "none"))]


@pytest.mark.parametrize("reduction", [2, 3, 4])
def test_gsd_is_a_balanced_fraction_holding_the_reference(reduction):
    spec = StudySpec(vary=SIX, design=f"gsd={reduction}")
    full = StudySpec(vary=SIX).cells()
    cells = spec.cells()
    chosen = set(cells)
    assert len(chosen) == len(cells)
    assert chosen <= set(full)
    assert [c for c in full if c in chosen] == cells  # the full grid's order
    assert spec.reference_cell() in cells
    assert len(cells) == pytest.approx(len(full) / reduction, rel=0.25)
    for k, name in enumerate(SIX):  # every level of every factor, about equally often
        counts = collections.Counter(c[k][1] for c in cells)
        assert set(counts) == set(spec.levels[name])
        assert max(counts.values()) <= 2 * min(counts.values())
    assert StudySpec(vary=SIX, design=f"gsd={reduction}").cells() == cells  # stable


@pytest.mark.parametrize("kwargs,match", [
    ({"vary": ("p",), "design": "gsd=2"}, "needs at least two varied factors"),
    ({"vary": ("p", "after_relu"), "design": "gsd=6"}, "use a smaller reduction"),
    ({"vary": SIX, "design": "gsd=40"}, "too large to build"),
    ({"vary": ("p", "norm", "activation", "remove", "init", "alpha_init", "after_relu",
               "placement", "model", "batch_size", "lr", "label_smoothing"),
      "design": "full"}, f"design full has 967,680 cells, more than {MAX_CELLS:,}; vary fewer "
                         "factors or levels; --design ofat has 31 cells"),
])
def test_designs_that_cannot_run_are_refused_in_one_line(kwargs, match):
    with pytest.raises(SpecError, match=match) as err:
        StudySpec(**kwargs)
    assert "\n" not in str(err.value)


def test_design_is_stored_and_fingerprinted():
    full, ofat = StudySpec(vary=THREE), StudySpec(vary=THREE, design="ofat")
    assert ofat.to_dict()["design"] == "ofat"
    back = StudySpec.from_dict(ofat.to_dict())
    assert back.design == "ofat" and back.cells() == ofat.cells()
    assert StudySpec.from_dict({k: v for k, v in full.to_dict().items() if k != "design"}
                               ).design == "full"  # specs stored before designs
    prints = {StudySpec(vary=THREE, design=d).fingerprint() for d in ("full", "ofat", "gsd=2")}
    assert len(prints) == 3
    # the full grid keeps the fingerprint it had before designs existed: old studies resume
    grid = {"vary": list(THREE), "levels": {k: list(v) for k, v in full.levels.items()},
            "fixed": {}, "metric": "val_top1"}
    old = hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:16]
    assert full.fingerprint() == old


def test_design_in_study_files_and_on_the_command_line(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('vary = ["p", "norm", "activation"]\ndesign = "ofat"\n')
    assert load_study_file(path).design == "ofat"
    over = build_spec(path, None, [], [], None, None, None, design="gsd=2")
    assert over.design == "gsd=2"
    assert build_spec(path, None, [], [], None, None, None).design == "ofat"
    path.write_text('vary = ["p"]\ndesign = "half"\n')
    with pytest.raises(SpecError, match=f"{path}: unknown design 'half'"):
        load_study_file(path)
    path.write_text('vary = ["p"]\ndesign = 2\n')
    with pytest.raises(SpecError, match="'design' must be a string"):
        load_study_file(path)


def test_paper_ablation_is_one_table_against_the_paper_gct():
    spec = load_study_file("studies/paper_ablation.toml")
    assert spec.design == "ofat" and spec.question
    assert spec.cells()[0] == spec.reference_cell()
    ref = dict(spec.reference_cell())
    assert ref == {"remove": "none", "activation": "tanh", "p": "2", "norm": "l2",
                   "placement": "every-conv"}
    rows = {cell_id(c) for c in spec.cells()[1:]}
    for change in ("remove=alpha", "remove=beta", "remove=gamma-fixed", "activation=sigmoid",
                   "activation=erf", "p=1", "p=inf", "p=gap", "norm=l1", "norm=layer",
                   "norm=none", "placement=block", "placement=after-block", "placement=none"):
        name, level = change.split("=", 1)
        assert cell_id(tuple({**ref, name: level}.items())) in rows, change
    assert len(spec.trials()) < 500  # below the cost check's default trial limit


def test_summary_names_what_each_design_cannot_estimate():
    assert summary_line({}) == ("design: full (full factorial: every combination of the varied "
                                "factors); estimates main effects and interactions")
    assert summary_line({"design": "ofat"}).endswith(
        "cannot estimate interactions (each change is seen at the reference only)")
    assert "main effects only" in summary_line({"design": "gsd=3"})


def run(*args: str):
    return CliRunner().invoke(app, ["run", *args, *TINY, "--workers", "1"])


def test_ofat_runs_one_table_against_one_reference(tmp_path):
    result = run("--vary", ",".join(THREE), "--design", "ofat", "--seeds", "1",
                 "--out", str(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("\n{") + 1:
                                       result.stdout.rindex("}") + 1])
    cells = [c["cell"] for c in summary["cells"]]
    assert len(cells) == 12 and cells[0] == "p=2 norm=l2 activation=tanh"
    assert [c["cell"] for c in summary["cells"] if c["is_reference"]] == [cells[0]]
    assert summary["spec"]["design"] == "ofat"
    assert "12 cells x 1 seeds = 12 trials" in result.stdout


def test_screening_design_runs_and_says_main_effects_only(tmp_path):
    result = run("--vary", ",".join(THREE), "--levels", "p=2,1", "--levels", "norm=l2,l1",
                 "--levels", "activation=tanh,sigmoid", "--design", "gsd=2", "--seeds", "1",
                 "--out", str(tmp_path), "--format", "markdown")
    assert result.exit_code == 0, result.output
    assert "4 cells x 1 seeds = 4 trials" in result.stdout
    assert ("**Design:** gsd=2 (generalized subset design (screening, about 1/2 of the full "
            "grid)); main effects only; cannot estimate interactions") in result.stdout
    assert "| p=2 norm=l2 activation=tanh |" in result.stdout
