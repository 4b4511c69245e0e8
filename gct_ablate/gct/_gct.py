"""Gated Channel Transformation (Yang et al., CVPR 2020, arXiv 1909.11519), generalized.

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
``_fused`` (the default; one reduction pass, x and (B, C) statistics saved, analytic
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
from torch import Tensor, nn

from gct_ablate.gct import _fused
from gct_ablate.gct._checks import _check_channels, _check_choice
from gct_ablate.gct._config import ACTIVATIONS, INITS, NORMS, GCTConfig, PValue, parse_p
from gct_ablate.gct._reference import gct_gate, gct_reference


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
            return _fused.gct(x, self.alpha, self.gamma, self.beta, self.config)
        return gct_reference(x, self.alpha, self.gamma, self.beta, **self._options())

    def extra_repr(self) -> str:
        p = "inf" if self.p == math.inf else self.p
        return (f"{self.channels}, p={p}, norm={self.norm}, activation={self.activation}, "
                f"after_relu={self.after_relu}, recompute={self.recompute}, fused={self.fused}")
