"""Gate analysis: statistics per GCT module, pooling over seeds, the figure and the table."""

from __future__ import annotations

import time

import pytest
import torch
from rich.console import Console
from torch import nn

from gct_ablate.analysis.gates import (
    NEAR,
    gate_stats,
    gates_table,
    gct_sites,
    plot_gates,
    pool_stats,
)
from gct_ablate.data import Dataset
from gct_ablate.gct import GCT
from gct_ablate.models import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the machine is shared, and oversubscribed threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n: int = 40, channels: int = 1, size: int = 8, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("toy", x, y, x.clone(), y.clone(), 10, channels, size)


def _randomize(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GCT):
                for t in (m.alpha, m.gamma, m.beta):
                    t.copy_(t + 0.3 * torch.randn(t.shape, generator=g))


@pytest.mark.parametrize("placement", ["every-conv", "after-block"])
def test_at_init_every_gate_is_exactly_one(placement: str) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1, placement=placement)
    stats = gate_stats(model, _data(), "cpu")
    sites = gct_sites(model)
    assert [s["index"] for s in stats] == list(range(len(sites)))
    assert [s["name"] for s in stats] == [s.name for s in sites]
    assert [s["stage"] for s in stats] == sorted(s["stage"] for s in stats)  # depth order
    for row in stats:
        assert row["gate_mean"] == 1.0 and row["gate_std"] == 0.0 and row["gate_dev"] == 0.0
        assert row["near_identity"] == 1.0 and row["gamma_small"] == 1.0
        assert row["alpha_mean"] == 1.0 and row["gamma_mean"] == 0.0 and row["beta_std"] == 0.0


def test_gate_statistics_match_direct_computation_over_all_samples() -> None:
    """Batched hook accumulation == the definitions applied to all samples at once."""
    gct = GCT(6)
    with torch.no_grad():
        gct.gamma.copy_(torch.tensor([0.0, 0.0, 0.02, 0.5, -1.0, 2.0]).view(1, 6, 1, 1))
        gct.beta.copy_(torch.tensor([0.01, 0.3, 0.0, 0.0, 0.02, -0.1]).view(1, 6, 1, 1))
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), gct)
    data = _data(n=37)
    (row,) = gate_stats(model, data, max_batches=None, batch_size=8)  # 5 batches, last short
    with torch.no_grad():
        g = gct.gate(model[0](data.val_x)).flatten(1).double()
    dev = (g - 1).abs()
    assert row["gate_mean"] == pytest.approx(g.mean().item(), rel=1e-12)
    assert row["gate_std"] == pytest.approx(g.std(correction=0).item(), rel=1e-9)
    assert row["gate_dev"] == pytest.approx(dev.mean().item(), rel=1e-12)
    near = (dev <= NEAR).all(dim=0)  # per channel, over EVERY sample
    assert row["near_identity"] == near.double().mean().item()
    assert near[0] and not near[1]  # beta 0.01 stays within 1 +- 0.05, beta 0.3 does not
    assert row["gamma_small"] == pytest.approx(3 / 6)
    assert row["gamma_mean"] == pytest.approx(gct.gamma.mean().item())


def test_max_batches_limits_the_samples_and_hooks_are_removed() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1)
    _randomize(model)
    model.train()
    data = _data(n=40)
    first = gate_stats(model, data, max_batches=1, batch_size=8)
    only8 = gate_stats(model, _sub(data, 8), max_batches=None, batch_size=8)
    assert first == only8
    assert gate_stats(model, data, max_batches=None, batch_size=8) != first
    assert model.training  # mode restored
    assert all(not s.module._forward_pre_hooks for s in gct_sites(model))


def _sub(data: Dataset, n: int) -> Dataset:
    return Dataset("toy", data.train_x, data.train_y, data.val_x[:n], data.val_y[:n], 10,
                   data.in_channels, data.image_size)


def test_pooling_over_seeds_is_the_spread_of_all_channels() -> None:
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("resnet20", 10, 1, placement="block")
        _randomize(model, seed)
        models.append(model)
    data = _data()
    pooled = pool_stats([gate_stats(m, data) for m in models])
    assert len(pooled) == 9 and all(r["n_seeds"] == 2 for r in pooled)
    for row in pooled:
        gammas = torch.cat([gct_sites(m)[row["index"]].module.gamma.flatten() for m in models])
        assert row["gamma_mean"] == pytest.approx(gammas.mean().item(), abs=1e-6)
        assert row["gamma_std"] == pytest.approx(gammas.std(correction=0).item(), rel=1e-5)


def test_plot_and_table(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1)
    _randomize(model)
    stats = [gate_stats(model, _data())] * 3
    start = time.perf_counter()
    fig = plot_gates(stats, "resnet20 every-conv")
    fig.savefig(tmp_path / "gates.png", dpi=100)
    elapsed = time.perf_counter() - start
    assert (tmp_path / "gates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert elapsed < 2.0  # about 0.2 s; runs once per trial
    assert fig.axes[0].get_ylabel() == "gamma" and "3 seeds" in fig._suptitle.get_text()
    console = Console(width=80, record=True)
    console.print(gates_table(pool_stats(stats), "t"))
    text = console.export_text()
    assert "1.0.conv1" in text and "2.0.downsample.0" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_model_without_gct_has_no_stats() -> None:
    assert gate_stats(build_model("resnet20", 10, 1, attention="se"), _data()) == []
