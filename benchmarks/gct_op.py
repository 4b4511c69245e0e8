"""Forward + backward of one GCT on CPU float32.

At 1 thread and at all cores in turn (``--threads``), compares side by side the tool's
fused module against the plain eager transcription of the published formula (the
reference) and against a memory floor (a per-channel sum reduction plus a broadcast
multiply forward, and the same backward), at
(128,16,32,32), (128,64,8,8), (32,256,28,28), contiguous and channels_last. Then every
p / norm / activation option against its eager reference at one shape.
Targets: >= 2x the reference at (128,16,32,32) and (32,256,28,28), >= 1.5x at (128,64,8,8);
<= 1.5x the floor; outputs and gradients equal to the reference within 1e-5.

    python -m benchmarks.gct_op [--threads 1,all] [--rounds 15] [--quick]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmarks._util import arg_parser, interleaved, ratio, set_threads, setup, verdict
from gct_ablate.gct import ACTIVATIONS, GCT, NORMS, _fused, gct_reference, published_gct

SHAPES = ((128, 16, 32, 32), (128, 64, 8, 8), (32, 256, 28, 28))
SPEEDUP_TARGET = {SHAPES[0]: 2.0, SHAPES[1]: 1.5, SHAPES[2]: 2.0}
FLOOR_TARGET = 1.5
TOLERANCE = 1e-5
MIN_SAMPLE = 0.02  # seconds per timed sample: a 1 ms call is repeated about 20 times


class _Floor(torch.autograd.Function):
    """Per-channel sum reduction + broadcast multiply, forward and backward alike.

    The multiplier is the sign of the sum, so that values stay bounded inside a network.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x * x.sum((2, 3), keepdim=True).sign_()

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> Tensor:
        return dy * dy.sum((2, 3), keepdim=True).sign_()


def floor(x: Tensor) -> Tensor:
    """The memory floor of a channel gate (see :class:`_Floor`)."""
    return _Floor.apply(x)


def _step(fn: Callable[..., Tensor], x: Tensor, params: list[Tensor], dy: Tensor
          ) -> Callable[[], list[Tensor]]:
    def run() -> list[Tensor]:
        leaf = x.detach().requires_grad_()
        y = fn(leaf, *params)
        return [y, *torch.autograd.grad(y, [leaf, *params], dy)]

    return run


def _params(channels: int, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    g = torch.Generator().manual_seed(channels)
    shape = (1, channels, 1, 1)
    alpha = 1 + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
    gamma, beta = (0.5 * torch.randn(shape, generator=g, dtype=dtype) for _ in range(2))
    return [t.requires_grad_() for t in (alpha, gamma, beta)]


def _max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    """Largest error relative to each tensor's scale (max |a - b| / max(1, max |b|))."""
    pairs = zip(a, b, strict=True)
    return max(((u - v).abs().max() / v.abs().max().clamp(min=1)).item() for u, v in pairs)


def _inputs(shape: tuple[int, ...], channels_last: bool) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x, dy = (torch.randn(shape, generator=g) for _ in range(2))
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    return x, dy


def bench_shapes(rounds: int) -> list[tuple[str, bool]]:
    """The targets: fused vs published reference vs floor, default options (p=2, l2, tanh)."""
    print("\nfused GCT (p=2, l2, tanh) fwd+bwd; ratios = other time / fused time, median (min-max)")
    checks = []
    for shape, cl in itertools.product(SHAPES, (False, True)):
        x, dy = _inputs(shape, cl)
        params = _params(shape[1])
        module = GCT(shape[1])
        cfg = module.config

        def fused(x: Tensor, *p: Tensor, cfg: Any = cfg) -> Tensor:
            return _fused.gct(x, *p, cfg)

        cases = {
            "reference": _step(published_gct, x, params, dy),
            "fused": _step(fused, x, params, dy),
            "floor": _step(floor, x, [], dy),
        }
        err = _max_diff(cases["fused"](), cases["reference"]())
        t = interleaved(cases, rounds=rounds, min_sample=MIN_SAMPLE)
        speed, vs_floor = ratio(t, "reference", "fused"), ratio(t, "fused", "floor")
        name = f"{shape}{' channels_last' if cl else ''}"
        print(f"  {name:34s} fused {t['fused'].text()}  speedup vs reference {speed.text()}  "
              f"fused/floor {vs_floor.text()}  max err {err:.1e}")
        checks += [(f"{name} speedup {speed.median:.2f} < {SPEEDUP_TARGET[shape]}",
                    speed.median >= SPEEDUP_TARGET[shape]),
                   (f"{name} fused/floor {vs_floor.median:.2f} > {FLOOR_TARGET}",
                    vs_floor.median <= FLOOR_TARGET),
                   (f"{name} error {err:.1e}", err <= TOLERANCE)]
    return checks


def bench_options(rounds: int, shape: tuple[int, ...]) -> list[tuple[str, bool]]:
    """Every p / norm / activation: fused vs the eager reference of the same options."""
    print(f"\nevery option at {shape}: speedup of fused over eager reference (same options)")
    x, dy = _inputs(shape, False)
    params = _params(shape[1])
    checks = []
    options = [dict(p=p) for p in (1.0, 1.5, 2.0, 3.0, 4.0, math.inf, "gap")]
    options += [dict(p=1.0, norm="l1", after_relu=True)]
    options += [dict(norm=n) for n in NORMS[1:]] + [dict(activation=a) for a in ACTIVATIONS[1:]]
    for opts in options:
        cfg = GCT(shape[1], **opts).config
        xin = x.relu() if opts.get("after_relu") else x

        def fused(x: Tensor, *p: Tensor, cfg: Any = cfg) -> Tensor:
            return _fused.gct(x, *p, cfg)

        def eager(x: Tensor, *p: Tensor, cfg: Any = cfg) -> Tensor:
            return gct_reference(x, *p, **cfg._asdict())

        cases = {"reference": _step(eager, xin, params, dy), "fused": _step(fused, xin, params, dy)}
        err = _max_diff(cases["fused"](), cases["reference"]())
        t = interleaved(cases, rounds=rounds, min_sample=MIN_SAMPLE)
        speed = ratio(t, "reference", "fused")
        text = ", ".join(f"{k}={v}" for k, v in opts.items())
        print(f"  {text:34s} fused {t['fused'].text()}  speedup {speed.text()}  "
              f"max err {err:.1e}")
        checks.append((f"{text} error {err:.1e}", err <= TOLERANCE))
    return checks


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=15)
    parser.add_argument("--quick", action="store_true", help="skip the per-option sweep")
    args = parser.parse_args()
    checks = []
    for n in setup(args):
        print()
        set_threads(n)
        found = bench_shapes(args.rounds)
        if not args.quick:
            found += bench_options(max(5, args.rounds // 2), (64, 32, 16, 16))
        checks += [(f"{n} thread(s): {name}", ok) for name, ok in found]
    print(verdict(checks))


if __name__ == "__main__":
    main()
