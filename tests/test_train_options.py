"""`gct-ablate train` offers every TrialConfig field as an option, from one declaration."""

import dataclasses

import typer.main
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.spec import TrialConfig

DERIVED = {"training", "gct_epochs", "save_model"}  # from --init-from, --stages, --save
STUDY_ONLY = {"checkpoint_every", "checkpoint_dir", "keep_checkpoints"}  # a study's trials


def train_options() -> dict[str, object]:
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_every_trial_config_field_is_a_train_option_with_its_default():
    options = train_options()
    fields = {f.name: f.default for f in dataclasses.fields(TrialConfig)}
    assert set(fields) - DERIVED - STUDY_ONLY == set(options) - {"stages", "save", "tracking_uri"}
    assert not STUDY_ONLY & set(options)  # one `train` keeps no per-epoch state to resume
    for name in set(fields) - DERIVED - STUDY_ONLY - {"epochs", "init_from"}:
        assert options[name].default == fields[name], name
    assert options["after_relu"].is_flag and options["channels_last"].secondary_opts


def test_a_bad_field_value_is_one_line_and_exit_2():
    result = CliRunner().invoke(app, ["train", "--norm", "l7", "--threads", "1"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "unknown level 'l7' for norm" in result.output
