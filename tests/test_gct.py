"""GCT: parity with the published formulas, gradients, options, dtypes, layouts, SE, factory.

Every GCT test taking ``impl`` runs on every implementation: the fused autograd functions
as they run by default (the compiled C kernel for float32 CPU input, their torch passes
otherwise), "fused-torch" (the kernel switched off), "fused-bn" (the torch passes with the
batch-norm-kernel backward used for large inputs, at any size) and the eager reference
(``fused=False``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from gct_ablate.gct import (
    ACTIVATIONS,
    ATTENTION_KINDS,
    GCT,
    NORMS,
    GatedConv,
    SqueezeExcite,
    _fused,
    _kernel,
    is_attention,
    make_attention,
    published_gct,
)

IMPLS = ("fused", "fused-torch", "fused-bn", "eager")
PS = (1.0, 1.5, 2.0, 3.0, 4.0, math.inf, "gap")


def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused functions without the compiled kernel: their torch passes."""
    monkeypatch.setattr(_kernel, "applies", lambda *tensors: False)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    threads = torch.get_num_threads()
    if request.param in ("fused-torch", "fused-bn"):
        no_kernel(monkeypatch)
    if request.param == "fused-bn":  # one thread: the kernel parallelises even tiny inputs
        monkeypatch.setattr(_fused, "_BN_MIN_NUMEL", 0)
        torch.set_num_threads(1)
    yield request.param
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- helpers
def make_gct(impl: str, channels: int, dtype: torch.dtype = torch.float64, seed: int = 0,
             **options) -> GCT:
    """A GCT with non-trivial parameters (far from the identity init)."""
    module = GCT(channels, fused=impl != "eager", **options).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, center, scale in (("alpha", 1.0, 0.3), ("gamma", 0.0, 1.5), ("beta", 0.0, 0.5)):
            t = getattr(module, name)
            t.copy_(center + scale * torch.randn(t.shape, generator=g, dtype=dtype))
    return module


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def outputs_and_grads(fn, x: Tensor, params: list[Tensor], dy: Tensor) -> list[Tensor]:
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    return [y, *torch.autograd.grad(y, [x, *params], dy)]


def params_of(m: GCT) -> list[Tensor]:
    return [m.alpha, m.gamma, m.beta]


# -------------------------------------------------------------- published formulas
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("mode", ["l2", "l1", "l1-after-relu"])
def test_parity_with_published_formulas(impl: str, dtype: torch.dtype, tol: float, mode: str):
    after_relu = mode == "l1-after-relu"
    options = dict(p=2.0, norm="l2") if mode == "l2" else dict(p=1.0, norm="l1")
    m = make_gct(impl, 8, dtype, after_relu=after_relu, **options)
    x = randn(3, 8, 5, 6, dtype=dtype)
    x = x.relu() if after_relu else x
    dy = randn(3, 8, 5, 6, dtype=dtype, seed=2)

    def oracle(x):
        if mode == "l2":
            return published_gct(x, *params_of(m))
        return published_gct(x, *params_of(m), mode="l1", after_relu=after_relu)

    got = outputs_and_grads(m, x, params_of(m), dy)
    want = outputs_and_grads(oracle, x, params_of(m), dy)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_identity_at_init(impl: str, p, norm: str, activation: str):
    m = GCT(6, p=p, norm=norm, activation=activation, fused=impl != "eager")
    x = randn(2, 6, 4, 5, dtype=torch.float32)
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_every_option(fused: bool, p, norm: str, activation: str):
    """Every p x norm x activation, input and parameter gradients (fast-mode gradcheck)."""
    m = make_gct("fused" if fused else "eager", 4, p=p, norm=norm, activation=activation)
    x = randn(2, 4, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *_: m(x), (x, *params_of(m)), fast_mode=True)


@pytest.mark.parametrize("options", [
    *(dict(p=p) for p in PS),
    *(dict(norm=n) for n in NORMS[1:]),
    *(dict(activation=a) for a in ACTIVATIONS[1:]),
])
def test_gradcheck_full_jacobian(impl: str, options: dict):
    m = make_gct(impl, 4, **options)
    x = randn(2, 4, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *_: m(x), (x, *params_of(m)))


@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck_after_relu(impl: str, norm: str):
    m = make_gct(impl, 4, p=1.0, norm=norm, after_relu=True)
    x = (randn(2, 4, 3, 3).abs() + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *_: m(x), (x, *params_of(m)))


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_float32_accuracy(p, norm: str, activation: str, channels_last: bool,
                                kernel: bool, monkeypatch: pytest.MonkeyPatch):
    """Fused float32 against the float64 truth (as close as, or closer than, eager float32)."""
    if not kernel:
        no_kernel(monkeypatch)
    fused = make_gct("fused", 8, torch.float32, p=p, norm=norm, activation=activation)
    truth = make_gct("eager", 8, torch.float64, p=p, norm=norm, activation=activation)
    x, dy = randn(4, 8, 9, 7), randn(4, 8, 9, 7, seed=3)
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    want = outputs_and_grads(truth, x, params_of(truth), dy)
    got = outputs_and_grads(fused, x.float(), params_of(fused), dy.float())
    for g, w in zip(got, want, strict=True):
        scale = w.abs().max().clamp(min=1).item()  # errors relative to the tensor's scale
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_path_is_used_and_saves_only_x(dtype: torch.dtype):
    """Saved for backward: x itself and (B, C)-sized statistics (at most 3 B C values)."""
    m = GCT(8, gamma_init="normal", beta_init="normal").to(dtype)
    x = randn(4, 8, 16, 16, dtype=dtype).requires_grad_()
    saved: list[Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = m(x)
    assert "GCTFunction" in type(y.grad_fn).__name__
    big = [t for t in saved if t.numel() > 3 * 4 * 8]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    assert sum(t.numel() for t in saved) < x.numel() + 8 * 4 * 8


# ------------------------------------------------------------------ compiled kernel
def test_meta_tensors_never_reach_the_kernel():
    """Shape-only (meta) tensors take the torch path: the kernel would read address 0."""
    m = GCT(8, gamma_init="normal").to("meta")
    x = torch.empty(2, 8, 4, 4, device="meta", requires_grad=True)
    assert not _kernel.applies(x, m.alpha, m.gamma, m.beta)
    y = m(x)
    y.sum().backward()
    assert y.shape == x.shape and y.is_meta and x.grad.shape == x.shape


def test_kernel_gct_refuses_a_second_derivative():
    """create_graph=True gives gradients that raise on a second backward, never wrong ones."""
    m = GCT(8, gamma_init="normal")
    x = randn(2, 8, 4, 4, dtype=torch.float32).requires_grad_()
    y = m(x)
    assert type(y.grad_fn).__name__.startswith("_KernelGCTFunction")
    dy = torch.ones_like(y, requires_grad=True)  # as from a graph built for double backward
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dx.sum().backward()
    (plain,) = torch.autograd.grad(m(x), x, dy)
    assert plain.grad_fn is None and torch.equal(plain, dx.detach())


def test_kernel_is_built_and_used_for_float32_cpu(monkeypatch: pytest.MonkeyPatch):
    """This machine has a C compiler: float32 CPU input runs the kernel, float64 does not."""
    assert _kernel.library() is not None, _kernel.describe()
    assert _kernel.describe().startswith("compiled C kernel")
    calls: list[str] = []
    real = _kernel.forward
    monkeypatch.setattr(_kernel, "forward", lambda *a, **k: calls.append("k") or real(*a, **k))
    m = GCT(8, gamma_init="normal")
    m(randn(2, 8, 4, 4, dtype=torch.float32))
    assert calls == ["k"]
    m.double()(randn(2, 8, 4, 4))
    m.float()(randn(2, 8, 4, 4, dtype=torch.float32)[:, :, ::2])  # strided: torch passes
    assert calls == ["k"]


@pytest.mark.parametrize("p", [2.0, 3.0, math.inf])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_gives_the_same_bits_at_any_thread_count(p, channels_last: bool):
    """Rows are cut into shares by the shape alone and summed in share order: 1 to 4
    threads give bit-identical outputs and gradients."""
    m = make_gct("fused", 16, torch.float32, p=p, norm="layer")
    x, dy = randn(32, 16, 32, 32, dtype=torch.float32), randn(32, 16, 32, 32, seed=2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plan = _kernel._plan(x.shape, channels_last, m.config, 4, m.alpha.shape)
    assert plan.cfg.rows == 8  # 8 rows of 16 * 32 * 32 values: 4 shares of 2^17 values
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 4):
            torch.set_num_threads(n)
            results.append(outputs_and_grads(m, x, params_of(m), dy.float()))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_kernel_keeps_small_tensors_on_one_share():
    """Below two shares' worth of values the kernel never wakes a second thread."""
    cfg = GCT(64).config
    assert _kernel._plan(torch.Size((4, 64, 8, 8)), False, cfg, 2, (1, 64, 1, 1)).cfg.rows == 32
    assert _kernel._plan(torch.Size((128, 64, 8, 8)), False, cfg, 2, (1, 64, 1, 1)).cfg.rows == 32
    assert _kernel._plan(torch.Size((2, 512, 32, 32)), True, cfg, 2, (1, 512, 1, 1)).cfg.rows == 1


def test_kernel_reports_the_interface_this_module_expects():
    """The C side's struct layout and enum values equal the Python copy; a changed value
    is named."""
    lib = _kernel.library()
    reported = lib.gct_interface().decode()
    assert _kernel.interface_mismatch(reported) is None
    assert "openmp=1" in reported.split()
    changed = reported.replace("A_ERF=4", "A_ERF=9")
    assert _kernel.interface_mismatch(changed) == "A_ERF: C 9, Python 4"
    assert "sizeof: C missing" in _kernel.interface_mismatch("P_GAP=0")


@pytest.mark.parametrize(("edit", "reason"), [
    (("enum { A_TANH, A_SIGMOID,", "enum { A_SIGMOID, A_TANH,"),
     "interface mismatch with gct_kernel-"),
    (("channels_last, pmode, after_relu, norm, act, threads;",
      "channels_last, pmode, after_relu, norm, threads, act;"),
     "interface mismatch with gct_kernel-"),
    (("for (int64_t c = 0; c < C; c++) e[c] = (float)w[c];",
      "for (int64_t c = 0; c < C; c++) e[c] = (float)w[c] + 0.01f;"), "self-check failed: y off"),
], ids=["enum", "struct", "maths"])
def test_a_kernel_out_of_step_falls_back_to_torch_with_one_warning(
        edit, reason, tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A C file whose enums, struct or maths disagree with the Python side is built, found
    out at load, and replaced by the torch path with one warning line."""
    source = _kernel.SOURCE.read_text()
    assert edit[0] in source
    changed = tmp_path / "_kernel.c"
    changed.write_text(source.replace(edit[0], edit[1]))
    monkeypatch.setattr(_kernel, "SOURCE", changed)
    monkeypatch.setenv("GCT_ABLATE_CACHE", str(tmp_path / "cache"))
    _kernel._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning) as caught:
            assert _kernel.library() is None
        assert len(caught) == 1 and "\n" not in str(caught[0].message)
        assert reason in str(caught[0].message)
        assert _kernel.describe().startswith(f"eager torch ({reason}")
        m = make_gct("fused", 8, torch.float32)
        x = randn(2, 8, 4, 4, dtype=torch.float32)
        y = m(x)  # the torch passes
        torch.testing.assert_close(y, m.double()(x.double()).float(), rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.undo()
        _kernel._load.cache_clear()
    assert _kernel.library() is not None


@pytest.mark.parametrize("shape", [
    (2, 12, 5, 3),      # NCHW: a group of 8 channels and 4 alone, 15 values (a part vector)
    (3, 64, 5, 1),      # channels_last: a 256-value tile in registers, then a part tile
    (2, 16, 3, 5),      # channels_last: gate and coef held in 1 register (C = 16)
    (2, 128, 2, 3),     # channels_last: gate and coef held in 8 registers (C = 128)
    (2, 48, 5, 3),      # channels_last tile of 288 values (48 does not divide 256), a part tile
    (2, 300, 3, 2),     # more channels than a tile: the tile is one pixel
    (1, 4, 80, 64),     # a row longer than one 64-tile block of float partial sums
    (24, 16, 64, 64),   # 6 MiB tensors with 256 KiB rows: the backward prefetches dx
], ids=["group-12", "tile-256", "held-16", "held-128", "tile-288", "tile-C", "blocks",
        "prefetch"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.0, 1.5, math.inf, "gap"])
def test_kernel_row_walks_against_float64(shape: tuple[int, ...], channels_last: bool, p):
    """Each way the kernel walks a row (tiles, blocks, prefetching) matches the float64 truth."""
    truth = make_gct("eager", shape[1], torch.float64, p=p, norm="l2")
    fused = GCT(shape[1], p=p, norm="l2")
    fused.load_state_dict(truth.state_dict())  # the same parameters, rounded to float32
    x, dy = randn(*shape), randn(*shape, seed=3)
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    calls: list[Tensor] = []
    with pytest.MonkeyPatch.context() as mp:
        real = _kernel.backward
        mp.setattr(_kernel, "backward", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
        got = outputs_and_grads(fused, x.float(), params_of(fused), dy.float())
    assert len(calls) == 1 and calls[0].is_contiguous() != channels_last  # the kernel ran
    want = outputs_and_grads(truth, x, params_of(truth), dy)
    for g, w in zip(got, want, strict=True):
        scale = w.abs().max().clamp(min=1).item()
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_p_inf_takes_the_first_of_tied_maxima(channels_last: bool):
    """p = inf routes dE to the first pixel holding max |x|, as torch's max(dim) does, across
    the kernel's 16-lane walks (ties within a lane, across lanes, with the scalar tail)."""
    x = randn(2, 20, 6, 7, dtype=torch.float32) * 0.1  # H*W = 42: two vectors and a tail
    pairs = [(3, 7), (5, 21), (20, 40), (41, 0), (17, 2), (33, 16)]  # (first, second) in order
    for c in range(20):
        a, b = pairs[c % len(pairs)]
        first, second = min(a, b), max(a, b)
        x.view(2, 20, 42)[:, c, first] = 5.0
        x.view(2, 20, 42)[:, c, second] = -5.0  # the same |x|, later
    dy = randn(2, 20, 6, 7, dtype=torch.float32, seed=4)
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    m = make_gct("fused", 20, torch.float32, p=math.inf)
    got = outputs_and_grads(m, x, params_of(m), dy)
    with pytest.MonkeyPatch.context() as mp:
        no_kernel(mp)
        want = outputs_and_grads(m, x, params_of(m), dy)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    firsts = torch.tensor([min(pairs[c % len(pairs)]) for c in range(20)])
    assert torch.equal(x.abs().flatten(2).max(dim=2).indices, firsts.expand(2, 20))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("beta", [-800.0, -40.0, 40.0, 800.0])
def test_kernel_gate_saturates_cleanly(activation: str, beta: float):
    """Deep in saturation the gate is 0 or 2 up to its true distance (e^-40 and less), and
    exactly so once exp underflows; never inf or nan."""
    m = make_gct("fused", 8, torch.float32, activation=activation)
    with torch.no_grad():
        m.beta.fill_(beta)
    x, dy = randn(2, 8, 4, 4, dtype=torch.float32), randn(2, 8, 4, 4, dtype=torch.float32, seed=2)
    y, dx, dalpha, dgamma, dbeta = outputs_and_grads(m, x, params_of(m), dy)
    gate, atol = (0.0 if beta < 0 else 2.0), (0.0 if abs(beta) > 700 else 1e-12)
    torch.testing.assert_close(y, x * gate, rtol=0, atol=atol)
    torch.testing.assert_close(dx, dy * gate, rtol=0, atol=atol)
    for grad in (dalpha, dgamma, dbeta):
        torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=atol)


@pytest.mark.parametrize("x_last, dy_last", [(True, False), (False, True)])
def test_kernel_takes_a_gradient_in_another_layout(x_last: bool, dy_last: bool):
    m = make_gct("fused", 8, torch.float32)
    x, dy = randn(3, 8, 5, 7, dtype=torch.float32), randn(3, 8, 5, 7, dtype=torch.float32, seed=6)
    want = outputs_and_grads(m, x, params_of(m), dy)
    fmt = torch.channels_last
    got = outputs_and_grads(m, x.contiguous(memory_format=fmt) if x_last else x, params_of(m),
                            dy.contiguous(memory_format=fmt) if dy_last else dy)
    assert got[0].is_contiguous(memory_format=fmt) == x_last
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("env, reason", [
    (dict(GCT_ABLATE_KERNEL="eager"), "GCT_ABLATE_KERNEL=eager"),
    (dict(CC="no-such-compiler-gct"), "no C compiler 'no-such-compiler-gct' found"),
    (dict(CC="false"), "building the C kernel failed"),
])
def test_kernel_falls_back_to_torch(env: dict, reason: str, tmp_path,
                                    monkeypatch: pytest.MonkeyPatch):
    """Switched off, no compiler, or a failing build: the torch passes, with the reason
    (a warning line only for the failed build: the other two are the user's choice or
    setup)."""
    monkeypatch.setenv("GCT_ABLATE_CACHE", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _kernel._load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert _kernel.library() is None
        assert [str(w.message) for w in caught] == (
            [f"GCT C kernel not used ({_kernel.describe()[len('eager torch ('):-1]}); "
             "using the eager torch path"] if env.get("CC") == "false" else [])
        assert _kernel.describe().startswith("eager torch") and reason in \
            _kernel.describe()
        m = make_gct("fused", 8, torch.float32)
        x = randn(2, 8, 4, 4, dtype=torch.float32)
        torch.testing.assert_close(m(x), make_gct("eager", 8, torch.float32)(x))
        assert list(tmp_path.iterdir()) == []  # no half-built library left behind
    finally:
        _kernel._load.cache_clear()


def test_kernel_build_is_cached(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """Built once into the cache folder; a later process (here: a cleared cache) reuses it."""
    monkeypatch.setenv("GCT_ABLATE_CACHE", str(tmp_path))
    _kernel._load.cache_clear()
    try:
        assert _kernel.library() is not None
        built = list(tmp_path.glob("gct_kernel-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        _kernel._load.cache_clear()
        def no_build(*args, **kwargs):
            raise AssertionError("rebuilt although a built library is cached")

        monkeypatch.setattr(_kernel.subprocess, "run", no_build)
        assert _kernel.library() is not None
        assert built[0].stat().st_mtime_ns == stamp
    finally:
        _kernel._load.cache_clear()


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("options, match", [
    (dict(p=0.5), "p must be >= 1"),
    (dict(p=-1), "p must be >= 1"),
    (dict(p=float("nan")), "p must be >= 1"),
    (dict(p="max"), "invalid p"),
    (dict(p=True), "invalid p"),
    (dict(p=None), "invalid p"),
    (dict(norm="l3"), "unknown norm"),
    (dict(activation="relu"), "unknown activation"),
    (dict(alpha_init="uniform"), "unknown alpha_init"),
    (dict(gamma_init="xavier"), "unknown gamma_init"),
    (dict(beta_init=0), "unknown beta_init"),
    (dict(eps=0.0), "invalid eps"),
    (dict(eps=-1e-5), "invalid eps"),
    (dict(eps=float("inf")), "invalid eps"),
])
def test_rejects_bad_options(options, match: str):
    with pytest.raises(ValueError, match=match):
        GCT(8, **options)


@pytest.mark.parametrize("channels", [0, -3, 2.5, True, "8"])
@pytest.mark.parametrize("kind", ["gct", "se", "none"])
def test_rejects_bad_channels(channels, kind: str):
    with pytest.raises(ValueError, match="invalid channels"):
        make_attention(kind, channels)


def test_accepts_p_spellings():
    assert GCT(4, p="inf").p == math.inf
    assert GCT(4, p=float("inf")).p == math.inf
    assert GCT(4, p="gap").p == "gap"
    assert GCT(4, p=3).p == 3.0
    assert GCT(4, p="1.5").p == 1.5


# ------------------------------------------------------------ layouts and dtypes
def test_channels_last(impl: str):
    m = make_gct(impl, 8, torch.float32)
    x, dy = randn(2, 8, 6, 5, dtype=torch.float32), randn(2, 8, 6, 5, dtype=torch.float32, seed=4)
    xc, dyc = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    got = outputs_and_grads(m, xc, params_of(m), dyc)
    want = outputs_and_grads(m, x, params_of(m), dy)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p, norm", [(2.0, "l2"), (1.0, "l1"), (3.0, "layer"), ("gap", "none")])
def test_low_precision_input_reduces_in_float32(impl: str, dtype: torch.dtype, p, norm: str):
    m = make_gct(impl, 8, torch.float32, p=p, norm=norm)
    x = (1e3 * randn(2, 8, 32, 32, dtype=torch.float32)).to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        gate = m.gate(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert gate.dtype == torch.float32 and gate.shape == (2, 8, 1, 1)
    exact = make_gct("eager", 8, torch.float64, p=p, norm=norm).gate(x.detach().double())
    torch.testing.assert_close(gate.double(), exact, rtol=1e-4, atol=1e-4)
    y.float().square().mean().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(t.grad).all() for t in params_of(m))


# ------------------------------------------------------------- parameters, inits
@pytest.mark.parametrize("options, per_channel", [
    ({}, 3),
    (dict(learn_alpha=False), 2),
    (dict(learn_beta=False), 2),
    (dict(learn_gamma=False), 2),
    (dict(learn_alpha=False, learn_beta=False), 1),
    (dict(learn_alpha=False, learn_beta=False, learn_gamma=False), 0),
])
def test_removed_parameters_are_buffers(options, per_channel: int):
    m = GCT(16, gamma_init="ones", beta_init="ones", **options)
    assert sum(p.numel() for p in m.parameters()) == per_channel * 16
    names = {n for n, _ in m.named_parameters()}
    for name in ("alpha", "gamma", "beta"):
        learned = options.get(f"learn_{name}", True)
        assert (name in names) == learned
        assert (name in dict(m.named_buffers())) != learned
        assert getattr(m, name).shape == (1, 16, 1, 1)
        assert name in m.state_dict()
    if not options.get("learn_alpha", True):
        assert torch.equal(m.alpha, torch.ones(1, 16, 1, 1))
    if not options.get("learn_beta", True):
        assert torch.equal(m.beta, torch.zeros(1, 16, 1, 1))
    assert torch.equal(m.gamma, torch.ones(1, 16, 1, 1))  # gamma keeps its init, learned or not


def test_initialisations():
    torch.manual_seed(0)
    m = GCT(512, alpha_init="normal", gamma_init="normal", beta_init="ones")
    assert abs(m.alpha.mean().item() - 1) < 0.03 and abs(m.alpha.std().item() - 0.1) < 0.02
    assert abs(m.gamma.mean().item()) < 0.03 and abs(m.gamma.std().item() - 0.1) < 0.02
    assert torch.equal(m.beta, torch.ones(1, 512, 1, 1))
    d = GCT(4)
    assert torch.equal(d.alpha, torch.ones(1, 4, 1, 1)) and not d.gamma.any() and not d.beta.any()
    z = GCT(4, alpha_init="zeros")
    assert not z.alpha.any()


def test_gate_method(impl: str):
    m = make_gct(impl, 8, torch.float64, p=3.0, norm="layer", activation="softsign")
    x = randn(2, 8, 5, 5)
    gate = m.gate(x)
    assert gate.shape == (2, 8, 1, 1)
    torch.testing.assert_close(m(x), x * gate)
    assert gate.min() > 0 and gate.max() < 2


# ---------------------------------------------------------------------- SE, factory
def test_squeeze_excite():
    se = SqueezeExcite(64)
    assert sum(p.numel() for p in se.parameters()) == 64 * 4 + 4 + 4 * 64 + 64
    assert sum(p.numel() for p in SqueezeExcite(256).parameters()) == 2 * 256 * 16 + 16 + 256
    assert sum(p.numel() for p in SqueezeExcite(3).parameters()) == 3 * 4 + 4 + 4 * 3 + 3
    x = randn(2, 64, 4, 4, dtype=torch.float32)
    gate = se.gate(x)
    assert se(x).shape == x.shape and ((gate > 0) & (gate < 1)).all()
    with pytest.raises(ValueError, match="invalid reduction"):
        SqueezeExcite(64, reduction=0)


def test_make_attention():
    assert ATTENTION_KINDS == ("gct", "se", "none")
    gct = make_attention("gct", 32, p=3.0, norm="l1", recompute=True)
    assert isinstance(gct, GCT) and gct.channels == 32 and gct.p == 3.0 and gct.recompute
    assert sum(p.numel() for p in gct.parameters()) == 3 * 32
    se = make_attention("se", 32, p=3.0, norm="l1", after_relu=True)
    assert isinstance(se, SqueezeExcite) and se.channels == 32
    assert isinstance(make_attention("none", 32, p=3.0), nn.Identity)
    assert is_attention(gct) and is_attention(se) and not is_attention(nn.Identity())
    with pytest.raises(ValueError, match="unknown attention 'cbam'; valid: gct, se, none"):
        make_attention("cbam", 32)
    with pytest.raises(TypeError):
        make_attention("gct", 32, not_an_option=1)


# -------------------------------------------------------- GatedConv and recompute
def _saved_bytes(fn) -> tuple[Tensor, int]:
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


@pytest.mark.parametrize("conv", [
    dict(kernel_size=3, padding=1, bias=False),
    dict(kernel_size=1, stride=2, bias=True),
    dict(kernel_size=3, padding=2, dilation=2, groups=2, bias=True),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gated_conv_recompute(impl: str, conv: dict, channels_last: bool):
    torch.manual_seed(0)
    gct = make_gct(impl, 8, torch.float32)
    plain = GatedConv(gct, nn.Conv2d(8, 12, **conv))
    x = randn(4, 8, 16, 16, dtype=torch.float32)
    if channels_last:
        plain = plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = list(plain.parameters())
    dy_shape = plain(x).shape
    dy = randn(*dy_shape, dtype=torch.float32, seed=5)

    def run():
        return outputs_and_grads(plain, x, params, dy)

    x_bytes = x.numel() * 4
    want = run()
    (gct_y, default_bytes) = _saved_bytes(lambda: plain(x.requires_grad_()))
    gct.recompute = True
    got = run()
    (_, recompute_bytes) = _saved_bytes(lambda: plain(x.requires_grad_()))
    x.requires_grad_(False)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # x and the gated copy that the conv keeps (of a strided 1x1 conv: the pixels it reads)
    gated_bytes = x_bytes // 4 if conv["kernel_size"] == 1 else x_bytes
    extra = 4 * plain.conv.weight.numel() + 10_000
    assert x_bytes + gated_bytes <= default_bytes < x_bytes + gated_bytes + extra
    assert recompute_bytes < 1.1 * x_bytes + extra


@pytest.mark.parametrize("kind", ["gct", "se"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [16, 15])
def test_strided_pointwise_conv_gates_only_the_pixels_it_reads(kind: str, channels_last: bool,
                                                                size: int):
    """conv1x1(attn(x), stride 2) computed on attn(x)[::2, ::2]: same values and gradients."""
    torch.manual_seed(0)
    attn = make_attention(kind, 8, **({"gamma_init": "normal"} if kind == "gct" else {}))
    module = GatedConv(attn, nn.Conv2d(8, 12, 1, stride=2, bias=True))
    x = randn(4, 8, size, size, dtype=torch.float32)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = list(module.parameters())
    dy = randn(4, 12, (size + 1) // 2, (size + 1) // 2, dtype=torch.float32, seed=3)
    got = outputs_and_grads(module, x, params, dy)
    want = outputs_and_grads(lambda x: module.conv(module.attn(x)), x, params, dy)
    assert got[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_gated_conv_fused_gradcheck():
    gct = make_gct("fused", 4, recompute=True)
    conv = nn.Conv2d(4, 3, 3, padding=1, bias=True).double()
    module = GatedConv(gct, conv)
    x = randn(2, 4, 4, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *_: module(x), (x, *module.parameters()))


def test_gated_conv_without_attention_grad():
    module = GatedConv(make_gct("fused", 4, recompute=True), nn.Conv2d(4, 3, 3)).double()
    module.conv.requires_grad_(False)
    x = randn(2, 4, 5, 5)
    out = module(x)  # the stem: input without grad, only the GCT parameters learn
    out.sum().backward()
    assert module.attn.gamma.grad is not None and module.conv.weight.grad is None


def test_torch_compile_traces_the_formula_and_matches_eager():
    """Under torch.compile GCT (and GatedConv, recompute or not) trace the published maths:
    no graph break, the same values and gradients as the fused eager module."""
    import torch._dynamo

    torch.manual_seed(0)
    gct = make_gct("fused", 4, torch.float32, p=3.0, norm="layer", recompute=True)
    module = nn.Sequential(GatedConv(gct, nn.Conv2d(4, 6, 3, padding=1)), nn.ReLU(),
                           GatedConv(make_attention("gct", 6), nn.Conv2d(6, 2, 1, stride=2)))
    x, dy = randn(2, 4, 6, 6, dtype=torch.float32), randn(2, 2, 3, 3, dtype=torch.float32)
    params = list(module.parameters())
    want = outputs_and_grads(module, x, params, dy)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(module)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    got = outputs_and_grads(torch.compile(module), x, params, dy)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
