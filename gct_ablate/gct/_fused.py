"""Fused GCT: custom autograd functions with an analytic backward (maths in ``gct.py``'s doc).

Float32 CPU input runs the compiled kernel of ``_kernel`` (one batch row at a time);
everything else (float64, half precision, CUDA, no C compiler) the torch passes below.
Torch passes, forward: one float32 reduction pass over x for the embedding, (B, C)-sized
gate maths, one broadcast multiply that writes the output. Saved for backward: x and
(B, C) statistics only. Backward: one pass reading (dy, x) that yields both ``gate * dy``
and the per-channel dot ``sum_hw dy * x`` (the batch-norm backward kernel with B*C
"channels", for contiguous float input; a multiply and a sum otherwise), (B, C) maths, one
in-place update of dx.
The p = inf embedding routes its gradient to one maximiser per channel (a subgradient).
``gated_conv`` also fuses the following convolution so that ``x * gate`` is recomputed, not
stored, in backward (the ``recompute`` memory saver).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gct_ablate.gct import _kernel
from gct_ablate.gct._config import GCTConfig

_NORMAL = 2.0 / math.sqrt(math.pi)
_BN_MIN_NUMEL = 65536


# ------------------------------------------------------------------ full-size passes
def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _bc_view(x: Tensor) -> Tensor | None:
    """x as a (1, B*C, H, W) view when that is free and worth it, else None.

    Only for contiguous float32/float64 of at least ``_BN_MIN_NUMEL`` elements: the batch
    norm kernel parallelises even tiny inputs, which costs more than it saves there.
    """
    if (x.dtype in (torch.float32, torch.float64) and x.is_contiguous()
            and x.numel() >= _BN_MIN_NUMEL):
        return x.view(1, -1, x.shape[2], x.shape[3])
    return None


def _embedding(x: Tensor, cfg: GCTConfig) -> tuple[Tensor, Tensor | None]:
    """(E (B, C) in the accumulation dtype, argmax indices for p = inf or None)."""
    acc = _acc_dtype(x)
    p = cfg.p
    if p == "gap":
        return x.mean(dim=(2, 3), dtype=acc), None
    if p == math.inf:
        e, idx = x.abs().flatten(2).max(dim=2)
        return e.to(acc), idx
    if p == 1.0:
        return (x if cfg.after_relu else x.abs()).sum(dim=(2, 3), dtype=acc), None
    if p == 2.0:
        if x.is_contiguous():  # a single reduction kernel, no temporary
            ssq = torch.linalg.vector_norm(x, 2, dim=(2, 3), dtype=acc).square_()
        else:  # channels_last: vector_norm is slow there, a square + sum is not
            xa = x if x.dtype == acc else x.to(acc)
            ssq = (xa * xa).sum(dim=(2, 3))
        return ssq.add_(cfg.eps).sqrt_(), None
    xa = x.abs() if x.dtype == acc else x.to(acc).abs_()
    return xa.pow_(p).sum(dim=(2, 3)).add_(cfg.eps).pow_(1.0 / p), None


def _scale(x: Tensor, gate: Tensor) -> Tensor:
    return x * gate.to(x.dtype)[:, :, None, None]


@functools.lru_cache(maxsize=16)
def _zeros_ones(n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Read-only (n,) zeros and ones: the batch-norm kernel's mean 0 and variance 1 (normal
    tensors, not inference tensors, whichever mode the first caller was in)."""
    with torch.inference_mode(False):
        return torch.zeros(n, dtype=dtype), torch.ones(n, dtype=dtype)


def _dot_and_scale(dy: Tensor, x: Tensor, gate: Tensor, scale: bool = True
                   ) -> tuple[Tensor | None, Tensor]:
    """(gate * dy or None, sum_hw dy * x in the accumulation dtype), in one pass if possible."""
    xv = _bc_view(x)
    if xv is not None and dy.dtype == x.dtype:
        n = xv.shape[1]
        zero, one = _zeros_ones(n, x.dtype)
        dxv, dot, _ = torch.ops.aten.native_batch_norm_backward(
            dy.reshape(xv.shape), xv, gate.reshape(n).to(x.dtype), zero, one, zero, one,
            False, 0.0, [scale, True, False])
        return (dxv.view(x.shape) if scale else None), dot.view(gate.shape)
    acc = _acc_dtype(x)
    if x.dtype != acc:  # half precision: the product in float32 too
        dot = torch.einsum("bchw,bchw->bc", dy.to(acc), x.to(acc))
    else:
        dot = (dy * x).sum(dim=(2, 3))
    return (_scale(dy, gate) if scale else None), dot


def _add_embedding_grad(dx: Tensor, x: Tensor, e: Tensor, de: Tensor, idx: Tensor | None,
                        cfg: GCTConfig) -> Tensor:
    """dx += dL/dE * dE/dx, in place."""
    p, dt = cfg.p, dx.dtype
    if p == "gap":
        return dx.add_((de / (x.shape[2] * x.shape[3])).to(dt)[:, :, None, None])
    if p == math.inf:
        flat = x.flatten(2)
        sign = flat.gather(2, idx[:, :, None]).sign()
        dflat = dx.flatten(2)
        dflat.scatter_add_(2, idx[:, :, None], sign * de.to(dt)[:, :, None])
        return dflat.view(dx.shape) if dflat.data_ptr() != dx.data_ptr() else dx
    if p == 1.0:
        if cfg.after_relu:
            return dx.add_(de.to(dt)[:, :, None, None])
        return dx.addcmul_(x.sign(), de.to(dt)[:, :, None, None])
    if p == 2.0:
        return dx.addcmul_(x, (de / e).to(dt)[:, :, None, None])
    xa = x.to(e.dtype)  # |x|^(p-1) in float32: it overflows half precision
    h = torch.copysign(xa.abs().pow_(p - 1.0), xa)
    return dx.addcmul_(h, (de * e.pow(1.0 - p))[:, :, None, None])


# ------------------------------------------------------------------- (B, C) gate maths
def _row(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A (1, C, 1, 1) parameter as a (1, C) row in ``dtype``."""
    row = t.view(1, -1)
    return row if row.dtype == dtype else row.to(dtype)


def _gate_forward(e: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, cfg: GCTConfig
                  ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """gate (B, C) from the embedding E, and what its backward needs."""
    a, g, b = _row(alpha, e.dtype), _row(gamma, e.dtype), _row(beta, e.dtype)
    s = e * a
    if cfg.norm == "l2":
        q = s.square().mean(dim=1, keepdim=True).add_(cfg.eps).rsqrt_()
        u = s * q
    elif cfg.norm == "l1":
        q = s.abs().mean(dim=1, keepdim=True).add_(cfg.eps).reciprocal_()
        u = s * q
    elif cfg.norm == "layer":
        var, mean = torch.var_mean(s, dim=1, correction=0, keepdim=True)
        q = var.add_(cfg.eps).rsqrt_()
        u = (s - mean).mul_(q)
    else:
        q, u = s, s
    z = torch.addcmul(b, g, u)
    act = cfg.activation
    if act == "tanh":
        gate = z.tanh().add_(1.0)
    elif act == "sigmoid":
        gate = z.sigmoid().mul_(2.0)
    elif act == "softsign":
        gate = F.softsign(z).add_(1.0)
    elif act == "hardtanh":
        gate = F.hardtanh(z).add_(1.0)
    else:
        gate = z.erf().add_(1.0)
    return gate, (s, q, u, z, a, g)


def _activation_grad(z: Tensor, gate: Tensor, activation: str) -> Tensor:
    if activation == "tanh":  # 1 - tanh^2 = gate (2 - gate): exact where tanh saturates
        return gate * (2.0 - gate)
    if activation == "sigmoid":  # 2 sigmoid(z) sigmoid(-z): exact where it saturates
        return gate * torch.sigmoid(-z)
    if activation == "softsign":
        return (z.abs() + 1.0).square_().reciprocal_()
    if activation == "hardtanh":
        return ((z > -1.0) & (z < 1.0)).to(z.dtype)
    return z.square().neg_().exp_().mul_(_NORMAL)


def _gate_backward(dgate: Tensor, e: Tensor, gate: Tensor, cache: tuple[Tensor, ...],
                   cfg: GCTConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dE, dalpha, dgamma, dbeta), the last three of shape (C,), from dL/dgate (B, C)."""
    s, q, u, z, a, g = cache
    dz = dgate * _activation_grad(z, gate, cfg.activation)
    dbeta = dz.sum(0)
    dgamma = (dz * u).sum(0)
    du = dz * g
    if cfg.norm == "l2":
        ds = (du - u * (du * u).mean(dim=1, keepdim=True)).mul_(q)
    elif cfg.norm == "l1":
        ds = (du - s.sign() * (du * u).mean(dim=1, keepdim=True)).mul_(q)
    elif cfg.norm == "layer":
        proj = (du * u).mean(dim=1, keepdim=True)
        ds = (du - du.mean(dim=1, keepdim=True) - u * proj).mul_(q)
    else:
        ds = du
    dalpha = (ds * e).sum(0)
    return ds * a, dalpha, dgamma, dbeta


# ------------------------------------------------------------------ autograd functions
def _forward(ctx: Any, x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor,
             cfg: GCTConfig, write_y: bool) -> tuple[Tensor | None, Tensor, tuple]:
    """(y = x * gate or None, gate, what backward needs); options go to ctx.

    Float32 CPU input in NCHW or channels_last layout runs the compiled kernel (one row at
    a time, see ``_kernel``); anything else (other dtypes, CUDA, no compiler) the torch
    passes of this module.
    """
    ctx.cfg = cfg
    ctx.kernel = _kernel.applies(x, alpha, gamma, beta)
    if ctx.kernel:  # parameters are leaves, not changed before backward: kept on ctx
        ctx.params = (alpha, gamma, beta)
        y, stats, idx = _kernel.forward(x, alpha, gamma, beta, cfg, write_y)
        return y, stats[1], (stats, idx)
    ctx.param_meta = [(t.shape, t.dtype) for t in (alpha, gamma, beta)]
    e, idx = _embedding(x, cfg)
    gate, cache = _gate_forward(e, alpha, gamma, beta, cfg)
    return (_scale(x, gate) if write_y else None), gate, (e, gate, idx, *cache)


def _backward(ctx: Any, dy: Tensor, x: Tensor, stats: list[Tensor]) -> list[Tensor | None]:
    """(dx, dalpha, dgamma, dbeta) of one GCT from dL/dy."""
    needs = ctx.needs_input_grad[:4]
    if ctx.kernel:  # the gradients come in the parameters' shape and dtype
        e_gate, idx = stats
        grads = _kernel.backward(dy, x, *ctx.params, e_gate, idx, ctx.cfg, needs[0])
        return [g if need else None for g, need in zip(grads, needs, strict=True)]
    e, gate, idx, *cache = stats
    dx, dot = _dot_and_scale(dy, x, gate, scale=needs[0])
    de, *pgrads = _gate_backward(dot, e, gate, tuple(cache), ctx.cfg)
    out = [None if dx is None else _add_embedding_grad(dx, x, e, de, idx, ctx.cfg)]
    for grad, (shape, dtype), need in zip(pgrads, ctx.param_meta, needs[1:], strict=True):
        out.append(grad.view(shape).to(dtype) if need else None)
    return out


class _GCTFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor,
                cfg: GCTConfig) -> Tensor:
        y, _, stats = _forward(ctx, x, alpha, gamma, beta, cfg, write_y=True)
        ctx.save_for_backward(x, *stats)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, *stats = ctx.saved_tensors
        return (*_backward(ctx, dy, x, stats), None)


class _KernelGCTFunction(torch.autograd.Function):
    """:class:`_GCTFunction` for input the compiled kernel takes, with nothing in between:
    at small shapes the Python around the two kernel calls is a tenth of the time."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor,
                cfg: GCTConfig) -> Tensor:
        y, stats, idx = _kernel.forward(x, alpha, gamma, beta, cfg)
        ctx.cfg, ctx.params = cfg, (alpha, gamma, beta)  # leaves, unchanged before backward
        ctx.save_for_backward(x, stats, idx)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: gradients that refuse a second pass
            return _kernel_backward_once(ctx, dy)
        return _kernel_backward(ctx, dy)  # (once_differentiable adds a wrapper per call)


def _kernel_backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
    x, stats, idx = ctx.saved_tensors  # gradients of inputs that need none are dropped
    return (*_kernel.backward(dy, x, *ctx.params, stats, idx, ctx.cfg,
                                  ctx.needs_input_grad[0]), None)


_kernel_backward_once = torch.autograd.function.once_differentiable(_kernel_backward)


class _GatedConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor,
                weight: Tensor, bias: Tensor | None, cfg: GCTConfig, conv: tuple) -> Tensor:
        _, gate, stats = _forward(ctx, x, alpha, gamma, beta, cfg, write_y=False)
        ctx.conv = conv
        ctx.save_for_backward(x, weight, *stats)
        return F.conv2d(_scale(x, gate), weight, bias, *conv)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, *stats = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_gct = any(ctx.needs_input_grad[:4])
        need_w, need_b = ctx.needs_input_grad[4:6]
        y = _scale(x, stats[0][1] if ctx.kernel else stats[1])  # recomputed, never stored
        dy, dw, db = torch.ops.aten.convolution_backward(
            dout, y, weight, [weight.shape[0]] if need_b else None, stride, padding, dilation,
            False, [0, 0], groups, [need_gct, need_w, need_b])
        del y
        gct = _backward(ctx, dy, x, stats) if need_gct else [None] * 4
        return (*gct, dw, db, None, None)


def gct(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, cfg: GCTConfig) -> Tensor:
    """Fused GCT of a (B, C, H, W) tensor (see the module doc)."""
    if _kernel.applies(x, alpha, gamma, beta):
        return _KernelGCTFunction.apply(x, alpha, gamma, beta, cfg)
    return _GCTFunction.apply(x, alpha, gamma, beta, cfg)


def gated_conv(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, cfg: GCTConfig,
               weight: Tensor, bias: Tensor | None, stride: tuple[int, ...],
               padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> Tensor:
    """``conv2d(gct(x), weight, bias, ...)`` keeping only x and (B, C) statistics for backward."""
    conv = (tuple(stride), tuple(padding), tuple(dilation), groups)
    return _GatedConvFunction.apply(x, alpha, gamma, beta, weight, bias, cfg, conv)
