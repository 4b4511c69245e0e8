"""train_eval: real (tiny) trainings on the bundled digits."""

import math

import pytest
import torch

from gct_ablate.gct import GCT
from gct_ablate.models import build_model
from gct_ablate.spec import TrialConfig
from gct_ablate.train import lr_factor, param_groups, resolve_device, train_eval

TINY = dict(epochs=2, threads=1, batch_size=128)


def test_same_seed_same_numbers_and_reports_every_epoch():
    seen = []
    a = train_eval(TrialConfig(**TINY, seed=3), lambda e, m: seen.append((e, dict(m))))
    b = train_eval(TrialConfig(**TINY, seed=3))
    assert [e for e, _ in seen] == [1, 2]
    assert set(seen[-1][1]) >= {"train_loss", "val_loss", "val_top1", "val_top5", "lr"}
    for key in ("val_loss", "val_top1", "train_loss"):
        assert a[key] == b[key]
    assert a["val_top1"] == seen[-1][1]["val_top1"]
    c = train_eval(TrialConfig(**TINY, seed=4))
    assert c["train_loss"] != a["train_loss"]


def test_metrics_carry_parameter_counts():
    m = train_eval(TrialConfig(epochs=1, threads=1, placement="block"))
    assert m["status"] == "ok" and m["epochs_done"] == 1
    assert m["n_attention_modules"] == 9
    # 3 parameters per channel; block placement sits before conv1 of each block, whose
    # input has the previous stage's width in the first block of stages 2 and 3
    channels = 3 * 16 + (16 + 2 * 32) + (32 + 2 * 64)
    assert m["params_attention"] == 3 * channels
    assert 0 < m["params_attention"] < m["params_total"]
    assert m["seconds"] > 0
    assert m["gct_impl"] == "C kernel"  # float32 on the CPU, with a C compiler here
    assert m["val_images"] == 360  # digits' validation split: accuracies are k / 360
    assert round(m["val_top1"] * 360, 9) == round(m["val_top1"] * 360)


def test_gct_implementation_is_reported():
    from gct_ablate.train import gct_implementation

    cpu = torch.device("cpu")
    assert gct_implementation(TrialConfig(), cpu) == "C kernel"
    assert gct_implementation(TrialConfig(amp="bf16"), cpu) == "torch"
    assert gct_implementation(TrialConfig(attention="se"), cpu) == "-"


def test_default_configuration_learns_digits():
    """The `gct-ablate train` default (GCT ResNet-20, 6 epochs) reaches >= 95 %."""
    m = train_eval(TrialConfig(threads=2))
    assert m["val_top1"] >= 0.95, m


def test_divergence_is_a_status_not_a_crash():
    m = train_eval(TrialConfig(epochs=3, threads=1, lr=1e8, warmup_epochs=0))
    assert m["status"] == "diverged"
    assert not math.isfinite(m["train_loss"])
    assert m["epochs_done"] < 3


def test_beta_is_excluded_from_weight_decay():
    model = build_model("resnet20", 10, 1, attention="gct", placement="every-conv")
    groups = param_groups(model, 5e-4, beta_decay=False)
    betas = {id(m.beta) for m in model.modules() if isinstance(m, GCT)}
    assert len(betas) == 21
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert not betas & decayed
    assert {id(p) for p in groups[1]["params"]} == betas
    gammas = {id(m.gamma) for m in model.modules() if isinstance(m, GCT)}
    assert gammas <= decayed
    assert len(param_groups(model, 5e-4, beta_decay=True)) == 1


def test_removed_beta_is_not_an_optimizer_parameter():
    model = build_model("resnet20", 10, 1, attention="gct",
                        attention_options=TrialConfig(remove="beta").attention_options())
    groups = param_groups(model, 5e-4, beta_decay=False)
    assert len(groups) == 1
    assert all(not isinstance(m.beta, torch.nn.Parameter)
               for m in model.modules() if isinstance(m, GCT))


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_schedule_warms_up_then_decays(schedule):
    cfg = TrialConfig(epochs=8, warmup_epochs=2, schedule=schedule)
    steps = 10
    assert lr_factor(0, steps, cfg) == pytest.approx(0.1)
    assert lr_factor(10, steps, cfg) == pytest.approx(0.55)
    assert lr_factor(20, steps, cfg) == pytest.approx(1.0)
    late = lr_factor(79, steps, cfg)
    assert late < 0.02 if schedule == "cosine" else late == pytest.approx(0.01)


def test_a_run_no_longer_than_its_warm_up_warms_up_over_its_first_fifth():
    """One epoch with the default one warm-up epoch: before, it never left warm-up (and
    Fashion-MNIST stayed at chance after it); now it warms up over 2 of 10 steps."""
    cfg = TrialConfig(epochs=1, warmup_epochs=1)
    assert lr_factor(0, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(1, 10, cfg) == pytest.approx(0.55)
    assert lr_factor(2, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(9, 10, cfg) < 0.05
    assert lr_factor(4, 10, TrialConfig(epochs=2, warmup_epochs=1)) < 1.0  # unchanged


def test_device_auto_is_cpu_here_and_bad_device_is_an_error():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_threads_apply_during_training_only():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        train_eval(TrialConfig(epochs=1, threads=1, attention="none"),
                   lambda e, m: seen.append(torch.get_num_threads()))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
