"""Post-hoc GCT pruning on a really trained digits ResNet-20 (3 epochs, a few seconds)."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from gct_ablate.analysis.gates import gate_stats, gct_sites
from gct_ablate.analysis.prune import (
    CurvePoint,
    max_removable,
    mean_curve,
    modules_removed,
    n_to_remove,
    plot_prune,
    prune_curve,
    prune_table,
    removal_order,
)
from gct_ablate.models import build_model
from gct_ablate.spec import TrialConfig
from gct_ablate.train import evaluate, train_eval

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = TrialConfig(epochs=3, batch_size=64, lr=0.05, seed=0, threads=1, device="cpu")




@pytest.fixture(scope="module")
def trained():
    """(model, data, train_eval metrics) of a digits ResNet-20 with GCT before every conv."""
    before = torch.get_num_threads()
    box = {}

    def keep(model, data, device):
        box.update(model=model, data=data)

    metrics = train_eval(CFG, on_end=keep)
    yield box["model"], box["data"], metrics
    torch.set_num_threads(before)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_zero_point_is_the_models_own_accuracy(trained) -> None:
    model, data, metrics = trained
    assert metrics["val_top1"] > 0.5  # it really learned something
    curve = prune_curve(model, data, order="gate")
    own = evaluate(model, data, 256)
    assert curve[0].n_removed == 0
    assert curve[0].val_top1 == own["val_top1"] == metrics["val_top1"]
    assert curve[0].val_loss == pytest.approx(own["val_loss"], rel=1e-12)


def _plain_model_with_trained_backbone(model):
    """The same architecture without attention, loaded with the trained non-GCT weights."""
    plain = build_model("resnet20", 10, 1, attention="none")
    state = {re.sub(r"\.conv\.(weight|bias)$", r".\1", k): v
             for k, v in model.state_dict().items() if ".attn." not in k}
    plain.load_state_dict(state, strict=True)  # every backbone weight maps one to one
    return plain


def test_full_point_is_the_accuracy_without_any_gct(trained) -> None:
    model, data, _ = trained
    full = prune_curve(model, data, order="gamma", fractions=(1.0,))[0]
    assert full.n_removed == len(gct_sites(model)) == 21
    plain = evaluate(_plain_model_with_trained_backbone(model), data, 256)
    assert full.val_top1 == plain["val_top1"]
    assert full.val_loss == pytest.approx(plain["val_loss"], rel=1e-6)
    zeroed = copy.deepcopy(model)  # gamma = beta = 0 makes every GCT the identity
    with torch.no_grad():
        for site in gct_sites(zeroed):
            site.module.gamma.zero_()
            site.module.beta.zero_()
    assert evaluate(zeroed, data, 256)["val_top1"] == full.val_top1
    assert full.val_loss != evaluate(model, data, 256)["val_loss"]  # trained gates matter


def test_curve_restores_the_model_and_counts_modules(trained) -> None:
    model, data, _ = trained
    state, before = _state(model), evaluate(model, data, 256)
    curve = prune_curve(model, data, order="random", seed=1)
    assert [p.n_removed for p in curve] == [0, 2, 4, 6, 8, 11, 13, 15, 17, 19, 21]
    assert [p.fraction for p in curve] == pytest.approx([i / 10 for i in range(11)])
    assert len(gct_sites(model)) == 21
    after = _state(model)
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert evaluate(model, data, 256) == before


def test_orders_follow_their_scores_and_random_is_seeded(trained) -> None:
    model, data, _ = trained
    dev = [r["gate_dev"] for r in gate_stats(model, data)]
    gate = removal_order(model, data, "gate")
    assert [dev[i] for i in gate] == sorted(dev)
    gamma = [s.module.gamma.abs().mean().item() for s in gct_sites(model)]
    assert [gamma[i] for i in removal_order(model, data, "gamma")] == sorted(gamma)
    r1, r2 = removal_order(model, data, "random", seed=7), removal_order(model, data, "random",
                                                                        seed=7)
    assert r1 == r2 and sorted(r1) == list(range(21))
    assert removal_order(model, data, "random", seed=8) != r1
    fr = (0.0, 0.3, 0.6)
    assert prune_curve(model, data, order="random", fractions=fr, seed=7) == prune_curve(
        model, data, order="random", fractions=fr, seed=7)
    with pytest.raises(ValueError, match="unknown order"):
        removal_order(model, data, "largest")


def test_finetune_after_removal_trains_a_copy(trained) -> None:
    model, data, _ = trained
    state = _state(model)
    plain = prune_curve(model, data, order="gate", fractions=(0.0, 1.0))
    tuned = prune_curve(model, data, order="gate", fractions=(0.0, 1.0), finetune_epochs=1,
                        cfg=CFG)
    assert tuned[0] == plain[0]  # nothing removed, nothing fine-tuned
    assert tuned[1].n_removed == 21 and tuned[1].val_loss != plain[1].val_loss
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_max_removable_on_a_hand_made_curve() -> None:
    curve = [CurvePoint(0.0, 0, 0.900, 0.3), CurvePoint(0.25, 2, 0.898, 0.3),
             CurvePoint(0.5, 4, 0.8952, 0.3), CurvePoint(0.75, 6, 0.890, 0.3),
             CurvePoint(1.0, 8, 0.897, 0.3)]
    assert max_removable(curve, 0.5) == 8  # 0.3 points lost with all 8 gone
    assert max_removable(curve[:4], 0.5) == 4  # 0.48 < 0.5; 6 costs 1.0 point
    assert max_removable(curve[:4], 0.1) == 0
    assert max_removable(curve[:4], 2.0) == 6
    with pytest.raises(ValueError, match="0 modules removed"):
        max_removable(curve[1:])
    assert [n_to_remove(f / 10, 21) for f in range(11)] == [0, 2, 4, 6, 8, 11, 13, 15, 17, 19,
                                                            21]


def test_mean_curve_table_and_plot(tmp_path) -> None:
    a = [CurvePoint(0.0, 0, 0.90, 0.3), CurvePoint(1.0, 4, 0.80, 0.5)]
    b = [CurvePoint(0.0, 0, 0.92, 0.1), CurvePoint(1.0, 4, 0.84, 0.7)]
    band = mean_curve([a, b])
    assert band[0].val_top1 == pytest.approx(0.91) and band[1].val_loss == pytest.approx(0.6)
    assert band[1].low < 0.82 < band[1].high and band[1].n == 2
    assert mean_curve([a])[0].low is None
    assert max_removable(band, 12.0) == 4 and max_removable(band, 5.0) == 0
    assert prune_table(band, band, "gate").row_count == 2
    fig = plot_prune({"p=2": (band, mean_curve([b, a])), "single": (a, b)}, "gate")
    fig.savefig(tmp_path / "prune.png")
    assert (tmp_path / "prune.png").read_bytes()[:4] == b"\x89PNG"
    assert len(fig.axes[0].lines) == 4


# ------------------------------------------------------------------------ fold removal
def _logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def _zero_gamma(model, positions=None):
    with torch.no_grad():
        for i, site in enumerate(gct_sites(model)):
            if positions is None or i in positions:
                site.module.gamma.zero_()


def test_folding_a_module_whose_gamma_is_zero_keeps_the_outputs(trained) -> None:
    model, data, _ = trained
    model = copy.deepcopy(model)
    _zero_gamma(model, {0, 5, 20})  # the stem, a block conv, the last conv
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a constant g(beta) far from 1, to be kept
        for i in (0, 5, 20):
            beta = gct_sites(model)[i].module.beta
            beta.add_(0.5 * torch.randn(beta.shape, generator=g))
    before = _logits(model, data.normalized("val"))
    for i in (0, 5, 20):
        with modules_removed(model, [i], "fold"):
            folded = _logits(model, data.normalized("val"))
        with modules_removed(model, [i], "identity"):
            dropped = _logits(model, data.normalized("val"))
        assert (folded - before).abs().max() < 1e-5
        assert (dropped - before).abs().max() > 1e-3  # identity throws g(beta) away
    assert torch.equal(_logits(model, data.normalized("val")), before)  # every swap undone


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softsign", "hardtanh", "erf"])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_fold_is_exact_for_every_gate_and_grouped_convs(activation, groups) -> None:
    from torch import nn

    from gct_ablate.analysis.fold import constant_gate
    from gct_ablate.gct import GCT, GatedConv

    torch.manual_seed(groups)
    gct = GCT(4, activation=activation)
    with torch.no_grad():
        gct.beta.copy_(torch.randn(1, 4, 1, 1))
    net = nn.Sequential(GatedConv(gct, nn.Conv2d(4, 8, 3, padding=1, groups=groups)),
                        nn.ReLU())
    x = torch.randn(5, 4, 6, 6)
    gate = gct.gate(x).detach()  # gamma = 0: the same gate for every sample, g(beta)
    torch.testing.assert_close(constant_gate(gct).expand(5, 4), gate.flatten(1), rtol=1e-6,
                               atol=0)
    before = _logits(net, x)
    with modules_removed(net, [0], "fold"):
        assert isinstance(net[0], nn.Conv2d)
        torch.testing.assert_close(_logits(net, x), before, rtol=0, atol=1e-5)
    assert isinstance(net[0], GatedConv)


def test_after_block_modules_fold_into_the_bn_before_them() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1, placement="after-block")
    with torch.no_grad():
        for site in gct_sites(model):
            site.module.beta.normal_()
    x = torch.randn(6, 1, 8, 8)
    before = _logits(model, x)
    every = list(range(len(gct_sites(model))))
    with modules_removed(model, every, "fold"):
        assert not gct_sites(model)
        torch.testing.assert_close(_logits(model, x), before, rtol=0, atol=1e-5)
        model.train()  # BN on batch statistics: the folded affine still matches
        folded = model(x)
    model.train()
    torch.testing.assert_close(folded, model(x), rtol=0, atol=1e-4)


def test_fold_curve_end_points(trained) -> None:
    """0 %: the model itself; 100 %: every module replaced by its constant, i.e. the model
    with gamma = 0 everywhere (identity's 100 % stays the plain backbone)."""
    model, data, metrics = trained
    fold = prune_curve(model, data, order="gate", mode="fold", fractions=(0.0, 1.0))
    assert fold[0].val_top1 == metrics["val_top1"] and fold[-1].n_removed == 21
    zeroed = copy.deepcopy(model)
    _zero_gamma(zeroed)
    own = evaluate(zeroed, data, 256)
    assert fold[-1].val_top1 == own["val_top1"]
    assert fold[-1].val_loss == pytest.approx(own["val_loss"], rel=1e-5)
    identity = prune_curve(model, data, order="gate", fractions=(1.0,))[0]
    plain = evaluate(_plain_model_with_trained_backbone(model), data, 256)
    assert identity.val_top1 == plain["val_top1"]
    with pytest.raises(ValueError, match="unknown mode"):
        prune_curve(model, data, mode="drop")


def test_pruned_copy_is_a_plain_network_that_saves_and_loads(trained, tmp_path) -> None:
    from gct_ablate.analysis.fold import pruned_copy
    from gct_ablate.checkpoint import load_model, save_model
    from gct_ablate.models import count_parameters

    model, data, _ = trained
    sites = gct_sites(model)
    ranked = removal_order(model, data, "gate")
    with modules_removed(model, ranked[:8], "fold"):
        expected = evaluate(model, data, 256)
    pruned, names = pruned_copy(model, sites, ranked[:8], "fold")
    assert len(gct_sites(pruned)) == 13 and len(gct_sites(model)) == 21
    assert not any(n in dict(pruned.named_modules()) for n in names)  # no GCT left there
    attention = sum(p.numel() for i in ranked[:8] for p in sites[i].module.parameters())
    assert count_parameters(pruned)[0] == count_parameters(model)[0] - attention
    assert evaluate(pruned, data, 256) == expected
    save_model(tmp_path / "p.pt", pruned, CFG, data, removed=names)
    back = load_model(tmp_path / "p.pt")
    assert evaluate(back.model, data, 256) == expected
    plain, _ = pruned_copy(model, sites, ranked, "identity")
    assert evaluate(plain, data, 256)["val_top1"] == evaluate(
        _plain_model_with_trained_backbone(model), data, 256)["val_top1"]


def test_both_modes_plot_as_small_multiples_with_the_legend_outside(tmp_path) -> None:
    from gct_ablate.analysis.prune import prune_modes_table

    a = [CurvePoint(0.0, 0, 0.90, 0.3), CurvePoint(1.0, 4, 0.80, 0.5)]
    b = [CurvePoint(0.0, 0, 0.90, 0.3), CurvePoint(1.0, 4, 0.85, 0.4)]
    curves = {"identity": (a, b), "fold": (b, a)}
    fig = plot_prune({"p=1": curves, "p=2": curves}, "gate")
    assert [len(ax.lines) for ax in fig.axes] == [4, 4]
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert "fold" in fig.axes[1].get_title()
    fig.savefig(tmp_path / "modes.png")
    table = prune_modes_table(curves, "gate")
    assert [c.header for c in table.columns] == ["removed %", "modules", "gate\nidentity",
                                                  "random\nidentity", "gate\nfold",
                                                  "random\nfold"]
    assert table.row_count == 2
