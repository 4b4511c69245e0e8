"""Gated Channel Transformation (Yang et al., CVPR 2020, arXiv 1909.11519) and an SE baseline.

For an input ``x`` of shape (B, C, H, W) and per-channel parameters alpha, gamma, beta of
shape (1, C, 1, 1), GCT computes, with all reductions in float32::

    embedding   s_c = alpha_c * E(x_c)
        E = (sum_hw |x|^p + eps)^(1/p)   p > 1 (p = 2: sqrt(sum_hw x^2 + eps), the paper's l2)
        E = sum_hw |x|                   p = 1 (no eps, the paper's l1 mode; sum_hw x when
                                         after_relu=True, the input being known non-negative)
        E = max_hw |x|                   p = inf
        E = mean_hw x                    p = "gap" (global average pooling)
    normalized  t_c, by ``norm``:
        l2:    t_c = s_c * gamma_c / sqrt(mean_c(s^2) + eps)          (paper, l2 mode)
        l1:    t_c = s_c * gamma_c / (mean_c |s| + eps)                (paper, l1 mode)
        layer: t_c = gamma_c * (s_c - mean_c s) / sqrt(var_c s + eps)  (biased variance)
        none:  t_c = gamma_c * s_c
    gate        gate_c = g(t_c + beta_c), g(0) = 1:
        tanh: 1 + tanh, sigmoid: 2 sigmoid, softsign: 1 + softsign, hardtanh: 1 + hardtanh,
        erf: 1 + erf
    output      y = x * gate          (in the dtype and memory format of x)

The paper's l2 mode is ``p=2, norm="l2"``; its l1 mode is ``p=1, norm="l1"``. With
gamma = beta = 0 (the default init) the gate is 1 and the module is the identity.
p = 1 has no eps with every norm: the 1-norm needs none to be differentiable away from
x = 0 (the sqrt of the 2-norm does), so the paper's l1 embedding is kept as is.
``after_relu`` only changes p = 1 (for other p, |x| = x on non-negative input anyway).

Two implementations compute the same thing: the fused autograd functions of
``_gct_fused`` (the default; one reduction pass, x and (B, C) statistics saved, analytic
backward; p = inf routes its gradient to one maximiser per channel, where eager autograd
splits it between ties) and the eager transcription above (``GCT(..., fused=False)``,
:func:`gct_reference`), the cross-check of the tests and the baseline of the benchmarks.
:class:`GatedConv` pairs an attention module with the conv it precedes, and implements the
``recompute`` memory saver.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gct_ablate import _gct_fused
from gct_ablate._gct_fused import GCTConfig
from gct_ablate.factors import ACTIVATIONS, ATTENTIONS, INITS, NORMS

ATTENTION_KINDS = ATTENTIONS  # the choices are defined once, in the factor registry

PValue = float | str  # a number >= 1, math.inf, or "gap"


def parse_p(p: Any) -> PValue:
    """Validated p: a float >= 1, ``math.inf`` (also "inf") or "gap"."""
    if isinstance(p, str):
        text = p.strip().lower()
        if text == "gap":
            return "gap"
        try:
            p = float(text)
        except ValueError:
            raise ValueError(f"invalid p {p!r}; p is a number >= 1, 'inf' or 'gap'") from None
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise ValueError(f"invalid p {p!r}; p is a number >= 1, 'inf' or 'gap'")
    p = float(p)
    if math.isnan(p) or p < 1:
        raise ValueError(f"invalid p {p!r}; p must be >= 1 (or 'inf', 'gap')")
    return p


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(allowed)}")
    return value


def _check_channels(channels: Any) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"invalid channels {channels!r}; expected a positive int")
    return channels


# ----------------------------------------------------------------------- reference maths
def embedding(x: Tensor, p: PValue, after_relu: bool = False, eps: float = 1e-5) -> Tensor:
    """E(x) of shape (B, C, 1, 1) in float32 (float64 if x is float64); no alpha."""
    xf = x if x.dtype == torch.float64 else x.float()
    if p == "gap":
        return xf.mean(dim=(2, 3), keepdim=True)
    if p == math.inf:
        return xf.abs().amax(dim=(2, 3), keepdim=True)
    if p == 1.0:
        return (xf if after_relu else xf.abs()).sum(dim=(2, 3), keepdim=True)
    if p == 2.0:
        return (xf.pow(2).sum(dim=(2, 3), keepdim=True) + eps).sqrt()
    return (xf.abs().pow(p).sum(dim=(2, 3), keepdim=True) + eps).pow(1.0 / p)


def normalized(s: Tensor, gamma: Tensor, norm: str, eps: float = 1e-5) -> Tensor:
    """The term t inside the gate, from the embedding s (B, C, 1, 1)."""
    if norm == "l2":
        return s * gamma / (s.pow(2).mean(dim=1, keepdim=True) + eps).sqrt()
    if norm == "l1":
        return s * gamma / (s.abs().mean(dim=1, keepdim=True) + eps)
    if norm == "layer":
        mean = s.mean(dim=1, keepdim=True)
        var = s.var(dim=1, unbiased=False, keepdim=True)
        return gamma * (s - mean) / (var + eps).sqrt()
    return gamma * s


def gate_activation(z: Tensor, activation: str) -> Tensor:
    """g(z) with g(0) = 1."""
    if activation == "tanh":
        return 1.0 + torch.tanh(z)
    if activation == "sigmoid":
        return 2.0 * torch.sigmoid(z)
    if activation == "softsign":
        return 1.0 + F.softsign(z)
    if activation == "hardtanh":
        return 1.0 + F.hardtanh(z)
    return 1.0 + torch.erf(z)


def gct_gate(
    x: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    beta: Tensor,
    *,
    p: PValue = 2.0,
    norm: str = "l2",
    activation: str = "tanh",
    after_relu: bool = False,
    eps: float = 1e-5,
) -> Tensor:
    """The gate (B, C, 1, 1), computed eagerly in float32 (float64 for float64 input)."""
    s = embedding(x, p, after_relu, eps)
    dt = s.dtype
    t = normalized(alpha.to(dt) * s, gamma.to(dt), norm, eps)
    return gate_activation(t + beta.to(dt), activation)


def gct_reference(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, **options: Any) -> Tensor:
    """Eager GCT: ``x * gct_gate(x, ...)`` in the dtype of x (the cross-check of the fast path).

    Half-precision input is multiplied in float32, so that autograd's reduction for the
    gate's gradient runs in float32 too.
    """
    gate = gct_gate(x, alpha, gamma, beta, **options)
    if x.dtype in (torch.float32, torch.float64):
        return x * gate.to(x.dtype)
    return (x.float() * gate).to(x.dtype)


# ----------------------------------------------------------------------------- modules
def _init_tensor(kind: str, channels: int, center: float) -> Tensor:
    if kind == "zeros":
        return torch.zeros(1, channels, 1, 1)
    if kind == "ones":
        return torch.ones(1, channels, 1, 1)
    return center + 0.1 * torch.randn(1, channels, 1, 1)


class GCT(nn.Module):
    """Gated Channel Transformation with every ablation option (formulas in the module doc).

    A parameter that is not learned (``learn_alpha=False`` etc.) is a buffer: alpha fixed at
    1, beta fixed at 0, gamma fixed at its init. ``module.alpha`` / ``.gamma`` / ``.beta``
    read the same way either way. ``fused=False`` selects the eager reference maths;
    ``recompute`` is a flag read by :class:`GatedConv`.
    """

    def __init__(
        self,
        channels: int,
        *,
        p: PValue = 2.0,
        norm: str = "l2",
        activation: str = "tanh",
        learn_alpha: bool = True,
        learn_beta: bool = True,
        learn_gamma: bool = True,
        alpha_init: str = "ones",
        gamma_init: str = "zeros",
        beta_init: str = "zeros",
        after_relu: bool = False,
        eps: float = 1e-5,
        recompute: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.p = parse_p(p)
        self.norm = _check_choice("norm", norm, NORMS)
        self.activation = _check_choice("activation", activation, ACTIVATIONS)
        for name, value in (("alpha_init", alpha_init), ("gamma_init", gamma_init),
                            ("beta_init", beta_init)):
            _check_choice(name, value, INITS)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 \
                or not math.isfinite(eps):
            raise ValueError(f"invalid eps {eps!r}; expected a finite number > 0")
        self.eps = float(eps)
        self.after_relu = bool(after_relu)
        self.recompute = bool(recompute)
        self.fused = bool(fused)
        alpha = _init_tensor(alpha_init, channels, 1.0) if learn_alpha else torch.ones(
            1, channels, 1, 1)
        beta = _init_tensor(beta_init, channels, 0.0) if learn_beta else torch.zeros(
            1, channels, 1, 1)
        gamma = _init_tensor(gamma_init, channels, 0.0)
        for name, value, learn in (("alpha", alpha, learn_alpha), ("gamma", gamma, learn_gamma),
                                   ("beta", beta, learn_beta)):
            if learn:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @property
    def config(self) -> GCTConfig:
        """The non-tensor options, as the fused functions take them."""
        return GCTConfig(self.p, self.norm, self.activation, self.after_relu, self.eps)

    def _options(self) -> dict[str, Any]:
        return self.config._asdict()

    def gate(self, x: Tensor) -> Tensor:
        """The gate (B, C, 1, 1) in float32, for analysis (forward does not keep it)."""
        return gct_gate(x, self.alpha, self.gamma, self.beta, **self._options())

    def forward(self, x: Tensor) -> Tensor:
        # Under torch.compile the formula itself is traced: inductor fuses it (the fused
        # functions are opaque to it, and the graph breaks they make cost more than they save).
        if self.fused and not torch.compiler.is_compiling():
            return _gct_fused.gct(x, self.alpha, self.gamma, self.beta, self.config)
        return gct_reference(x, self.alpha, self.gamma, self.beta, **self._options())

    def extra_repr(self) -> str:
        p = "inf" if self.p == math.inf else self.p
        return (f"{self.channels}, p={p}, norm={self.norm}, activation={self.activation}, "
                f"after_relu={self.after_relu}, recompute={self.recompute}, fused={self.fused}")


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018): y = x * sigmoid(W2 relu(W1 GAP(x)))."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"invalid reduction {reduction!r}; expected a positive int")
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.recompute = False

    def gate(self, x: Tensor) -> Tensor:
        """The gate (B, C, 1, 1)."""
        s = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(s))))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


def make_attention(kind: str, channels: int, **options: Any) -> nn.Module:
    """Build an attention module: "gct" (options go to :class:`GCT`), "se" or "none".

    GCT options are ignored for "se" and "none" ("se" takes only ``reduction``).
    """
    if kind == "gct":
        return GCT(channels, **options)
    if kind == "se":
        return SqueezeExcite(channels, reduction=options.get("reduction", 16))
    if kind == "none":
        _check_channels(channels)
        return nn.Identity()
    raise ValueError(f"unknown attention {kind!r}; valid: {', '.join(ATTENTION_KINDS)}")


def is_attention(module: nn.Module) -> bool:
    """True for a GCT or SE module (``nn.Identity`` of kind "none" is not attention)."""
    return isinstance(module, (GCT, SqueezeExcite))


class GatedConv(nn.Module):
    """``conv(attn(x))``; with ``attn.recompute`` the gated input is recomputed in backward.

    By default the conv stores its input ``x * gate`` for backward, as any conv does (before
    a strided 1x1 conv, such as a downsampling projection, only the pixels it reads). With
    ``attn.recompute`` only x (and (B, C) statistics) are kept: a fused GCT + conv2d
    autograd function for a fused GCT before a plain ``nn.Conv2d`` outside autocast (the
    cost is one broadcast multiply per conv in backward), else non-reentrant activation
    checkpointing of the pair (the cost is a second forward of both).
    """

    def __init__(self, attn: nn.Module, conv: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.conv = conv

    def _run(self, x: Tensor) -> Tensor:
        conv = self.conv
        if not self._strided_pointwise():
            return conv(self.attn(x))
        # A strided 1x1 conv reads every s-th pixel only: keep (and store) just those.
        y = self.attn(x)[:, :, ::conv.stride[0], ::conv.stride[1]]
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        return F.conv2d(y.contiguous(memory_format=fmt), conv.weight, conv.bias, 1, 0, 1,
                        conv.groups)

    def _strided_pointwise(self) -> bool:
        conv = self.conv
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1)
                and conv.padding == (0, 0) and conv.stride != (1, 1))

    def _fusable(self, x: Tensor) -> bool:
        attn, conv = self.attn, self.conv
        return (isinstance(attn, GCT) and attn.fused and type(conv) is nn.Conv2d
                and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and not torch.is_autocast_enabled(x.device.type))

    def forward(self, x: Tensor) -> Tensor:
        if not (getattr(self.attn, "recompute", False) and torch.is_grad_enabled()) \
                or torch.compiler.is_compiling():  # compiled: its partitioner picks what to keep
            return self._run(x)
        if self._fusable(x):
            a, c = self.attn, self.conv
            return _gct_fused.gated_conv(x, a.alpha, a.gamma, a.beta, a.config, c.weight, c.bias,
                                         c.stride, c.padding, c.dilation, c.groups)
        return checkpoint(self._run, x, use_reentrant=False)
