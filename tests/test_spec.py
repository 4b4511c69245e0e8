"""StudySpec / TrialConfig and TOML study files."""

from pathlib import Path

import pytest

from gct_ablate.spec import (
    SpecError,
    StudySpec,
    TrialConfig,
    cell_id,
    parse_cell_id,
)
from gct_ablate.study_file import load_study_file

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.toml"))


def test_grid_crosses_default_levels():
    spec = StudySpec(vary=("p", "activation"))
    cells = spec.cells()
    assert len(cells) == 6 * 4
    assert len(set(cells)) == len(cells)
    assert cells[0] == (("p", "1"), ("activation", "tanh"))
    assert spec.reference_cell() == (("p", "2"), ("activation", "tanh"))
    assert spec.study_name == "vary-p-activation"
    assert len(spec.trials()) == 24 * 3


def test_config_of_a_cell_is_typed_and_validated():
    spec = StudySpec(vary=("p",), levels={"p": (1, "inf")}, fixed={"epochs": "7"}, seeds=2)
    cfg = spec.config((("p", "inf"),), seed=1)
    assert (cfg.p, cfg.epochs, cfg.seed) == ("inf", 7, 1)
    assert cfg.attention_options()["p"] == "inf"
    assert spec.config((("p", "1"),)).attention_options()["p"] == 1.0


def test_attention_options_follow_remove_and_init():
    opts = TrialConfig(remove="alpha+beta", init="normal").attention_options()
    assert opts["learn_alpha"] is False and opts["learn_beta"] is False
    assert opts["learn_gamma"] is True and opts["gamma_init"] == "normal"
    assert TrialConfig(remove="gamma-fixed").attention_options()["learn_gamma"] is False
    assert TrialConfig(attention="se").attention_options() == {}


def test_cell_id_round_trip():
    cell = (("placement", "stages=1+2"), ("p", "inf"))
    assert parse_cell_id(cell_id(cell)) == cell


def test_fingerprint_ignores_seed_count_but_not_grid():
    a = StudySpec(vary=("p",), seeds=3)
    assert a.fingerprint() == StudySpec(vary=("p",), seeds=5).fingerprint()
    assert a.fingerprint() != StudySpec(vary=("p",), levels={"p": (1, 2)}).fingerprint()
    assert a.fingerprint() != StudySpec(vary=("p",), fixed={"epochs": 3}).fingerprint()


@pytest.mark.parametrize("kwargs,match", [
    ({"vary": ("p",), "fixed": {"p": 2}}, "both vary and be set"),
    ({"vary": ("p",), "levels": {"norm": ("l2",)}}, "does not vary"),
    ({"vary": ("p",), "levels": {"p": ("0.5",)}}, "p must be >= 1"),
    ({"vary": ("wat",)}, "unknown factor"),
    ({"seeds": 0}, "seeds"),
    ({"metric": "f1"}, "unknown metric"),
])
def test_bad_specs(kwargs, match):
    with pytest.raises(SpecError, match=match):
        StudySpec(**kwargs)


def test_overrides_command_line_over_file():
    base = StudySpec(vary=("p", "norm"), levels={"p": (1, 2)}, fixed={"epochs": 5}, seeds=2)
    over = base.with_overrides(fixed={"norm": "l1"}, levels={"p": (3,)}, seeds=4)
    assert over.vary == ("p",)
    assert over.levels == {"p": ("3",)}
    assert over.fixed == {"epochs": "5", "norm": "l1"}
    assert over.seeds == 4


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_are_valid(path):
    spec = load_study_file(path)
    assert spec.vary and spec.question
    assert path.read_text().lstrip().startswith("#")  # each says what it asks
    assert len(spec.cells()) >= 2


def test_one_study_per_unexplored_axis():
    names = {p.stem for p in STUDIES}
    assert {"p_norm", "normalization", "activation", "remove_params", "init",
            "placement_density", "paper_reference"} <= names


def write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,match", [
    ("vary = [\"p\"\n", "TOML syntax error"),
    ("vary = [\"p\"]\ncolour = 1\n", "unknown key 'colour'; allowed"),
    ("vary = \"p\"\n", "'vary' must be a list"),
    ("vary = [\"p\"]\n[levels]\np = 2\n", "levels.p must be a list"),
    ("vary = [\"p\"]\n[levels]\np = [0.5]\n", "p must be >= 1"),
    ("vary = [\"q\"]\n", "unknown factor 'q'"),
    ("vary = [\"p\"]\nseeds = \"three\"\n", "'seeds' must be an integer"),
    ("vary = [\"p\"]\nseeds = true\n", "'seeds' must be an integer"),
    ("vary = [\"p\"]\nname = \"../x\"\n", "invalid study name '../x'; use letters"),
    ("vary = [\"p\"]\ndesign = \"half\"\n", "unknown design 'half'; valid: full, ofat"),
    ("vary = [\"p\"]\n[set]\nplacement = \"every=\u00b2\"\n", "unknown placement"),
])
def test_study_file_errors_name_file_and_key(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match=match) as err:
        load_study_file(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_study_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_study_file(tmp_path / "nope.toml")
