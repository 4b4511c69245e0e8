"""GCT added to a trained backbone: saved files, init sources, identity at step 0, stages."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from gct_ablate.checkpoint import config_path, load_model, read_state, save_model
from gct_ablate.cli import app
from gct_ablate.data import load_dataset
from gct_ablate.errors import SpecError, UsageError
from gct_ablate.factors import canonical_level
from gct_ablate.finetune import (
    check_fits,
    init_source,
    load_backbone,
    parse_stages,
    training_stages,
)
from gct_ablate.models import attention_modules, backbone_keys, build_model
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.train import evaluate, train_eval

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()
PLAIN = TrialConfig(attention="none", epochs=1, threads=1, device="cpu", seed=0)




@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """(path, metrics, model) of a plain digits ResNet-20 trained 1 epoch, saved by
    :func:`save_model` as ``--save`` does."""
    before = torch.get_num_threads()
    path = tmp_path_factory.mktemp("backbone") / "plain.pt"
    box = {}

    def keep(model, data, device):
        box["model"] = model
        save_model(path, model, PLAIN, data)

    metrics = train_eval(PLAIN, on_end=keep)
    yield path, metrics, box["model"]
    torch.set_num_threads(before)


def _digits():
    return load_dataset("digits")


@pytest.mark.parametrize("placement", ["every-conv", "block", "after-block", "every=3"])
def test_backbone_keys_map_one_to_one_onto_the_plain_backbone(placement) -> None:
    plain = build_model("resnet20", 10, 1, attention="none").state_dict()
    model = build_model("resnet20", 10, 1, placement=placement)
    mapping = backbone_keys(model)
    assert sorted(mapping.values()) == sorted(plain)  # every backbone tensor, once
    state = model.state_dict()
    assert all(state[k].shape == plain[v].shape for k, v in mapping.items())
    left = set(state) - set(mapping)
    assert left and all(".attn." in k or ".1." in k for k in left)  # attention only
    if placement == "every-conv":
        assert mapping["layer2.0.downsample.0.conv.weight"] == "layer2.0.downsample.0.weight"
    if placement == "after-block":
        assert mapping["layer1.0.bn2.0.running_mean"] == "layer1.0.bn2.running_mean"


@pytest.mark.parametrize("placement", ["every-conv", "after-block"])
def test_attention_at_identity_keeps_the_loaded_networks_logits(backbone, placement) -> None:
    path, metrics, plain = backbone
    data = _digits()
    cfg = TrialConfig(training="finetune-joint", init_from=str(path), placement=placement)
    model = build_model("resnet20", 10, 1, placement=placement)
    assert load_backbone(model, cfg, 10) == str(path)
    plain.eval(), model.eval()
    with torch.no_grad():
        x = data.normalized("val")
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=1e-5)
    assert evaluate(model, data, 256) == evaluate(plain, data, 256)


def test_train_eval_starts_at_the_loaded_networks_accuracy(backbone) -> None:
    path, metrics, _ = backbone
    cfg = TrialConfig(training="finetune-joint", init_from=str(path), epochs=1, threads=1,
                      device="cpu")
    seen = []
    result = train_eval(cfg, on_stage=lambda *a: seen.append(a))
    assert result["val_top1_step0"] == metrics["val_top1"]
    assert result["val_loss_step0"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert [(name, epoch) for name, epoch, _ in seen] == [("init", 0), ("joint", 1)]


def test_the_gct_stage_trains_only_attention_then_the_joint_stage_everything(backbone) -> None:
    path, _, plain = backbone
    loaded = plain.state_dict()
    cfg = TrialConfig(training="finetune-staged", init_from=str(path), epochs=1, gct_epochs=1,
                      threads=1, device="cpu")
    assert [(s.name, s.first_epoch, s.epochs) for s in training_stages(cfg)] == [("gct", 1, 1)]
    box = {}
    result = train_eval(cfg, on_end=lambda m, d, dev: box.update(model=m))
    model = box["model"]
    mapping = backbone_keys(model)
    state = model.state_dict()
    for key, plain_key in mapping.items():  # weights and BN running statistics unchanged
        assert torch.equal(state[key], loaded[plain_key]), key
    gammas = torch.cat([s.module.gamma.flatten() for s in attention_modules(model)])
    assert gammas.abs().max() > 0  # the attention parameters did learn
    assert all(p.requires_grad for p in model.parameters())  # trainable again after the run
    assert result["val_top1_after_gct"] == result["val_top1"]

    two = cfg.replace(epochs=3, gct_epochs=1, lr=0.05, gct_lr=0.2)
    stages = training_stages(two)
    assert [(s.name, s.first_epoch, s.epochs, s.lr, s.attention_only) for s in stages] == [
        ("gct", 1, 1, 0.2, True), ("joint", 2, 2, 0.05, False)]


def test_stage_schedules_restart_per_stage(backbone) -> None:
    path, _, _ = backbone
    lrs = []
    cfg = TrialConfig(training="finetune-staged", init_from=str(path), epochs=2, gct_epochs=1,
                      gct_lr=0.3, lr=0.05, warmup_epochs=0, threads=1, device="cpu")
    result = train_eval(cfg, lambda epoch, m: lrs.append(m["lr"]))
    assert result["epochs_done"] == 2 and set(result) >= {"val_top1_step0", "val_top1_after_gct"}
    assert lrs == [pytest.approx(0.0, abs=1e-12)] * 2  # each stage's cosine ends at 0


def test_mismatched_backbones_are_one_line_errors(backbone, tmp_path) -> None:
    path, _, plain = backbone
    model = build_model("resnet20", 10, 1)
    cfg = TrialConfig(training="finetune-joint", init_from=str(path))
    other = build_model("resnet32", 10, 1, attention="none")
    data = _digits()
    save_model(tmp_path / "r32.pt", other, PLAIN.replace(model="resnet32"), data)
    with pytest.raises(UsageError, match=r"r32.pt is a resnet32; this run is resnet20 with 10"):
        check_fits(init_source(str(tmp_path / "r32.pt"), cfg), model, cfg, 10)
    raw = dict(plain.state_dict())  # a bare state dict (no PATH.json) with 5 classes
    raw["fc.weight"], raw["fc.bias"] = raw["fc.weight"][:5], raw["fc.bias"][:5]
    torch.save(raw, tmp_path / "five.pt")
    with pytest.raises(UsageError, match="five.pt has 5 classes; this run is resnet20 with 10"):
        check_fits(init_source(str(tmp_path / "five.pt"), cfg), model, cfg, 10)
    gct = build_model("resnet20", 10, 1)
    save_model(tmp_path / "gct.pt", gct, PLAIN.replace(attention="gct"), data)
    with pytest.raises(UsageError, match="trained with attention=gct; init_from takes"):
        check_fits(init_source(str(tmp_path / "gct.pt"), cfg), model, cfg, 10)
    torch.save(gct.state_dict(), tmp_path / "gct-bare.pt")
    with pytest.raises(UsageError, match="holds attention modules"):
        check_fits(init_source(str(tmp_path / "gct-bare.pt"), cfg), model, cfg, 10)
    with pytest.raises(UsageError, match="no such file"):
        init_source(str(tmp_path / "missing.pt"), cfg)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UsageError, match="junk.pt: not a torch state dict"):
        init_source(str(tmp_path / "junk.pt"), cfg)


def test_torchvision_state_dict_file_and_the_hub_cache(tmp_path) -> None:
    """A torchvision ResNet's own state dict loads into resnet18 + GCT; a hub weight name is
    read from the local cache only, with a one-line error naming where it looked."""
    reference = torchvision.models.resnet18(weights=None, num_classes=1000)
    model = build_model("resnet18", 1000, 3, small_input=False)
    cfg = TrialConfig(model="resnet18", training="finetune-joint", init_from="torchvision:x")
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(UsageError) as err:
            init_source("torchvision:IMAGENET1K_V1", cfg)
        looked = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        assert f"looked for {looked}" in str(err.value) and "\n" not in str(err.value)
        looked.parent.mkdir(parents=True)
        torch.save(reference.state_dict(), looked)  # as torchvision's download leaves it
        src = init_source("torchvision:IMAGENET1K_V1", cfg)
        check_fits(src, model, cfg, 1000)
        with pytest.raises(UsageError, match="unknown torchvision weights 'NOPE'"):
            init_source("torchvision:NOPE", cfg)
        with pytest.raises(UsageError, match="needs a torchvision model"):
            init_source("torchvision:IMAGENET1K_V1", cfg.replace(model="resnet20"))
    finally:
        torch.hub.set_dir(before)
    small = build_model("resnet18", 10, 1)  # the digits stem: 3x3 over 1 channel
    with pytest.raises(UsageError, match=r"conv1.weight is \(64, 3, 7, 7\) there, "
                                         r"\(64, 1, 3, 3\) here"):
        check_fits(src, small, cfg, 10)
    load_backbone(model, cfg.replace(init_from=str(looked)), 1000)
    x = torch.randn(2, 3, 64, 64)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)


def test_an_mlflow_run_id_is_read_through_the_run_store(backbone, tmp_path) -> None:
    from gct_ablate.tracking import Tracker, default_tracking_uri

    path, _, plain = backbone
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, artifact_root=tmp_path / "art")
    experiment = tracker.experiment("backbones")
    run_id = tracker.client.create_run(experiment).info.run_id
    tracker.log_json(run_id, json.loads(config_path(path).read_text())["config"],
                     "config.json")
    tracker.log_torch(run_id, plain.state_dict(), "model/state_dict.pt")
    cfg = TrialConfig(training="finetune-joint", init_from=run_id)
    assert cfg.init_from == run_id
    src = init_source(run_id, cfg, uri)
    assert src.label == f"MLflow run {run_id}" and src.cfg.attention == "none"
    model = build_model("resnet20", 10, 1)
    load_backbone(model, cfg, 10, uri)
    assert evaluate(model, _digits(), 256) == evaluate(plain, _digits(), 256)
    bare = tracker.client.create_run(experiment).info.run_id
    with pytest.raises(UsageError, match="has no model/state_dict.pt"):
        init_source(bare, cfg, uri)
    with pytest.raises(UsageError, match="no MLflow run 0000"):
        init_source("0" * 32, cfg, uri)


def test_saved_files_round_trip_and_a_stale_config_is_caught(backbone, tmp_path) -> None:
    path, metrics, plain = backbone
    saved = load_model(path)
    assert saved.cfg == PLAIN and saved.info["removed"] == []
    assert evaluate(saved.model, _digits(), 256)["val_top1"] == metrics["val_top1"]
    assert torch.load(path, weights_only=True).keys() == plain.state_dict().keys()
    assert sorted(os.listdir(path.parent)) == ["plain.pt", "plain.pt.json"]  # no temp files
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    other = build_model("resnet20", 10, 1, attention="none")
    config_path(copy).write_text(config_path(path).read_text())
    torch.save(other.state_dict(), copy)  # new weights, old PATH.json
    with pytest.raises(UsageError, match="does not describe"):
        read_state(copy)
    torch.save(other.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(UsageError, match="no bare.pt.json of gct-ablate beside it"):
        load_model(tmp_path / "bare.pt")


@pytest.mark.parametrize("text,expected", [
    ("gct:1,joint:2", (1, 2)), ("gct:3", (3, 0)), ("joint:4", (0, 4)), (" GCT:1 , joint:0", (1, 0)),
])
def test_parse_stages(text, expected) -> None:
    assert parse_stages(text) == expected


@pytest.mark.parametrize("text", ["joint:1,gct:1", "gct:x", "gct:1,gct:2", "frozen:1", "gct:0",
                                  ""])
def test_bad_stages(text) -> None:
    with pytest.raises(UsageError, match="--stages"):
        parse_stages(text)


def test_training_settings_are_validated_and_canonical(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert canonical_level("init_from", "m.pt") == str(tmp_path / "m.pt")
    assert canonical_level("init_from", str(tmp_path / "m.pt")) == str(tmp_path / "m.pt")
    assert canonical_level("init_from", "A" * 32) == "a" * 32
    assert canonical_level("init_from", "torchvision:imagenet1k_v1") == \
        "torchvision:IMAGENET1K_V1"
    assert canonical_level("init_from", "None") == "none"
    with pytest.raises(SpecError, match="needs init_from"):
        TrialConfig(training="finetune-joint").check_training()
    with pytest.raises(SpecError, match="1 <= gct_epochs <= epochs"):
        training_stages(TrialConfig(training="finetune-staged", init_from="m.pt", epochs=2,
                                    gct_epochs=3))
    with pytest.raises(SpecError, match="has none"):
        train_eval(TrialConfig(training="finetune-staged", init_from="m.pt", attention="none"))
    TrialConfig(gct_epochs=0).check_training()  # stage settings do not matter from scratch
    # a study file may fix the training and leave init_from to the command line
    staged = StudySpec(fixed={"training": "finetune-staged", "epochs": 2})
    assert staged.with_overrides(fixed={"init_from": "m.pt"}).config(()).init_from == str(
        tmp_path / "m.pt")


def test_train_save_then_init_from_with_stages_end_to_end(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = runner.invoke(app, ["train", "--attention", "none", "--epochs", "1", "--save",
                                "m.pt", "--threads", "1", "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "saved: m.pt (weights), m.pt.json (config)" in first.output
    top1 = re.search(r"val_top1\W+([\d.]+) %", first.output).group(1)
    second = runner.invoke(app, ["train", "--init-from", "m.pt", "--stages", "gct:1,joint:1",
                                 "--threads", "1", "--device", "cpu"])
    assert second.exit_code == 0, second.output
    lines = second.output.splitlines()
    step0 = next(line for line in lines if line.startswith("step 0"))
    assert f"val top-1 {top1} %" in step0 and "gct added at identity" in step0
    assert any(line.startswith("after the gct stage (epoch 1): val top-1 ") for line in lines)
    assert any(line.startswith("after the joint stage (epoch 2): val top-1 ") for line in lines)
    assert "finetune-staged" in second.output and "epochs_done" in second.output
    for args, message in [
        (["--stages", "gct:1"], "--stages needs --init-from"),
        (["--init-from", "m.pt", "--stages", "gct:1", "--epochs", "3"], "leave --epochs out"),
        (["--init-from", "nope.pt"], "nope.pt: no such file"),
        (["--init-from", "m.pt", "--model", "resnet32"], "is a resnet20; this run is resnet32"),
    ]:
        bad = runner.invoke(app, ["train", *args, "--threads", "1", "--device", "cpu"])
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)


def test_a_study_over_training_runs_through_the_worker_and_is_summarised(
        backbone, tmp_path, monkeypatch) -> None:
    """init_from given relative to one folder; the worker runs in another and finds it."""
    from gct_ablate.grid import prepare_study
    from gct_ablate.storage import open_storage
    from gct_ablate.study import finish_study, preflight_data
    from gct_ablate.tracking import Tracker, default_tracking_uri
    from gct_ablate.worker import WorkerOptions, run_worker

    path, metrics, _ = backbone
    monkeypatch.chdir(path.parent)
    base = TrialConfig(threads=1, device="cpu", save_model=False)
    spec = StudySpec(vary=("training",), fixed={"epochs": 1, "gct_epochs": 1,
                                                 "init_from": path.name},
                     seeds=2, name="ft", base=base)
    assert spec.fixed["init_from"] == str(path)  # stored absolute
    out = tmp_path / "runs"
    out.mkdir()
    uri = default_tracking_uri(out)
    preflight_data(spec, uri)
    with pytest.raises(SpecError, match="cell training=finetune-joint: .*needs init_from"):
        preflight_data(StudySpec(vary=("training",), fixed={"epochs": 1}, base=base))
    storage = open_storage(None, out)
    tracker = Tracker(uri, artifact_root=out / "mlartifacts")
    prepare_study(spec, storage, tracker)
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative name would not resolve here
    assert run_worker(WorkerOptions("ft", None, str(out), base)) == 6
    summary = finish_study(storage, "ft", tracker, out)
    cells = {c.cell: c for c in summary.cells}
    assert set(cells) == {"training=scratch", "training=finetune-joint",
                          "training=finetune-staged"}
    assert all(c.n == 2 for c in cells.values())
    assert cells["training=scratch"].verdict == "reference"
    for trial in storage.get_all_trials(storage.get_study_id_from_name("ft")):
        cell, seen = trial.user_attrs["cell"], trial.user_attrs["metrics"]
        if cell != "training=scratch":  # both fine-tunings started at the backbone's accuracy
            assert seen["val_top1_step0"] == metrics["val_top1"]
    text = runner.invoke(app, ["summary", "ft", "--out", str(out)])
    assert text.exit_code == 0 and "finetune-staged" in text.output
