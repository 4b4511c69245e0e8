"""The factor registry: names, levels, parsing of command-line lists."""

import math

import pytest

from gct_ablate.factors import (
    FACTORS,
    FactorError,
    canonical_level,
    get_factor,
    parse_assignments,
    parse_level,
    split_levels,
)


def test_every_factor_parses_its_own_levels_and_reference():
    for f in FACTORS.values():
        for level in (*f.levels, f.reference):
            assert canonical_level(f.name, level) == canonical_level(f.name, canonical_level(
                f.name, level)), f.name
        assert canonical_level(f.name, f.reference) in [canonical_level(f.name, x)
                                                         for x in f.levels] or f.group == "training"


@pytest.mark.parametrize("raw,expected", [
    ("2", "2"), (2, "2"), (2.0, "2"), ("1.5", "1.5"), ("inf", "inf"), ("INF", "inf"),
    ("gap", "gap"), (1, "1"), (float("inf"), "inf"),
])
def test_p_levels(raw, expected):
    assert canonical_level("p", raw) == expected


@pytest.mark.parametrize("raw", ["0.5", "0", "-1", "nan", "two", ""])
def test_p_below_one_or_garbage_is_rejected(raw):
    with pytest.raises(FactorError, match="p"):
        parse_level("p", raw)


@pytest.mark.parametrize("raw,expected", [
    ("every-conv", "every-conv"), ("stages=1,2", "stages=1+2"), ("stages=2+1", "stages=1+2"),
    ("every=4", "every=4"), ("after-block", "after-block"), ("none", "none"),
])
def test_placement_levels(raw, expected):
    assert canonical_level("placement", raw) == expected


@pytest.mark.parametrize("raw", ["stages=", "stages=5", "every=0", "every=x", "everywhere"])
def test_bad_placements(raw):
    with pytest.raises(FactorError, match="placement"):
        parse_level("placement", raw)


def test_unknown_factor_lists_valid_names():
    with pytest.raises(FactorError) as err:
        get_factor("gamma_magic")
    message = str(err.value)
    assert "unknown factor 'gamma_magic'" in message and "activation" in message
    assert "\n" not in message


def test_unknown_level_lists_valid_levels():
    with pytest.raises(FactorError, match="valid: tanh, sigmoid, softsign, hardtanh, erf"):
        parse_level("activation", "relu")


def test_numbers_and_booleans():
    assert parse_level("epochs", "30") == 30
    assert parse_level("lr", "0.05") == pytest.approx(0.05)
    assert parse_level("beta_decay", "true") is True
    assert parse_level("after_relu", False) is False
    with pytest.raises(FactorError, match="epochs"):
        parse_level("epochs", "0")
    with pytest.raises(FactorError, match="lr"):
        parse_level("lr", "0")
    with pytest.raises(FactorError, match="epochs"):
        parse_level("epochs", "1.5")
    assert math.isclose(parse_level("weight_decay", 0), 0.0)


def test_split_levels_keeps_stage_subsets_together():
    assert split_levels("every-conv,stages=1,2,block") == ["every-conv", "stages=1+2", "block"]
    assert split_levels("1, 2 ,inf") == ["1", "2", "inf"]


def test_parse_assignments():
    assert parse_assignments("p=1,2,inf", "--levels") == {"p": ["1", "2", "inf"]}
    assert parse_assignments("epochs=30,model=resnet56", "--set") == {
        "epochs": ["30"], "model": ["resnet56"]}
    assert parse_assignments("placement=block,stages=1,2;p=2", "--levels") == {
        "placement": ["block", "stages=1+2"], "p": ["2"]}
    with pytest.raises(FactorError, match="unknown factor 'bogus'"):
        parse_assignments("bogus=1", "--set")
    with pytest.raises(FactorError, match="malformed"):
        parse_assignments("30", "--set")
