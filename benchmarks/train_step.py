"""One training step of ResNet-20 with GCT before every conv, at 1 thread and all cores.

Batch 128 of 32x32 inputs, 10 classes, SGD with momentum; forward, backward and optimizer
step. Side by side in one run, at each thread count in turn: no attention ("plain"), the
tool's GCT (default: the C kernel for float32 CPU input), the same with the kernel switched
off ("gct-torch": the fused torch passes), ``recompute=True``, the eager transcription of
the formula ("reference", ``fused=False``), SE (reduction 16) and the memory floor gate of
benchmarks.gct_op ("floor", the cheapest possible channel gate).
Target: GCT overhead over plain at most 10 % on CPU, at every thread count.

With ``--compile`` it also times ``torch.compile`` of the plain and the GCT network (the
fused GCT stays one opaque call; inductor compiles the network around it; the first,
compiling step is reported apart).

    python -m benchmarks.train_step [--threads 1,all] [--rounds 15] [--channels-last] [--compile]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._util import arg_parser, interleaved, ratio, set_threads, setup, verdict
from benchmarks.gct_op import floor
from gct_ablate.gct import GatedConv, _kernel
from gct_ablate.models import attention_modules, build_model

OVERHEAD_TARGET = 1.10
VARIANTS: dict[str, dict] = {
    "plain": dict(attention="none"),
    "gct": dict(attention="gct", attention_options={}),
    "gct-torch": dict(attention="gct", attention_options={}),  # stepped without the kernel
    "gct-recompute": dict(attention="gct", attention_options=dict(recompute=True)),
    "reference": dict(attention="gct", attention_options=dict(fused=False)),
    "se": dict(attention="se", attention_options={}),
    "floor": dict(attention="gct", attention_options={}),  # attn replaced by the floor
}
DESCRIPTIONS = {
    "plain": "no attention",
    "gct": "the tool's default: fused GCT, the conv stores x*gate",
    "gct-torch": "the same with the C kernel switched off (fused torch passes)",
    "gct-recompute": "recompute=True: fused GCT+conv, x*gate recomputed in backward",
    "reference": "eager formula (fused=False), the conv stores x*gate",
    "se": "squeeze-and-excitation, reduction 16, before every conv",
    "floor": "memory floor gate (sum + multiply, fwd and bwd) before every conv",
}


class FloorGate(nn.Module):
    """benchmarks.gct_op's memory floor as a module: the cheapest possible channel gate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return floor(x)


def build(variant: str, channels_last: bool = False, seed: int = 0) -> nn.Module:
    """ResNet-20 for 10 classes with the variant's attention at every conv."""
    torch.manual_seed(seed)
    model = build_model("resnet20", 10, 3, placement="every-conv", **VARIANTS[variant])
    for site in attention_modules(model):  # leave the identity init: a trained-like gate
        if variant == "se":
            continue
        with torch.no_grad():
            site.module.gamma.normal_(0, 0.5)
            site.module.beta.normal_(0, 0.5)
    for module in model.modules():
        if isinstance(module, GatedConv) and variant == "floor":
            module.attn = FloorGate()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def batch(batch_size: int = 128, channels_last: bool = False) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


@contextmanager
def kernel_off() -> Iterator[None]:
    """The fused GCT without the C kernel (its torch passes) inside the block."""
    applies = _kernel.applies
    _kernel.applies = lambda *tensors: False
    try:
        yield
    finally:
        _kernel.applies = applies


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kernel: bool = True
            ) -> Callable[[], float]:
    """One SGD training step (the closure the benchmarks time)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    def step_without_kernel() -> float:
        with kernel_off():
            return step()

    return step if kernel else step_without_kernel


def measure(steps: dict[str, Callable[[], float]], threads: int, rounds: int, layout: str,
            compiled: bool) -> list[tuple[str, bool]]:
    """Time every step at one thread count; print the table and ratios; the checks."""
    set_threads(threads)
    t = interleaved(steps, rounds=rounds, warmup=3)
    print(f"\nResNet-20, batch 128, 32x32, {layout}, attention before all 21 convs, "
          f"{threads} thread(s); median (min-max) per step")
    for name, samples in t.items():
        text = DESCRIPTIONS.get(name, "torch.compile of the network above")
        print(f"  {name:13s} {samples.text():28s} {text}")
    overhead = ratio(t, "gct", "plain")
    print(f"GCT / plain:          {overhead.text()}   (target <= {OVERHEAD_TARGET:.2f})")
    for name in ("gct-torch", "gct-recompute", "reference", "se", "floor"):
        print(f"{name + ' / plain:':22s}{ratio(t, name, 'plain').text()}")
    print(f"gct-torch / GCT:      {ratio(t, 'gct-torch', 'gct').text()}   (> 1: the kernel helps)")
    print(f"GCT / floor:          {ratio(t, 'gct', 'floor').text()}   (1: as cheap as any gate)")
    if compiled:
        print(f"plain+compile / plain: {ratio(t, 'plain+compile', 'plain').text()}")
        print(f"gct+compile / gct:     {ratio(t, 'gct+compile', 'gct').text()}")
        print(f"gct+compile / plain+compile: {ratio(t, 'gct+compile', 'plain+compile').text()}")
    return [(f"{threads} thread(s): GCT overhead {overhead.median:.2f} > {OVERHEAD_TARGET}",
             overhead.median <= OVERHEAD_TARGET)]


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=15)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of the plain and the GCT network")
    args = parser.parse_args()
    counts = setup(args)
    x, y = batch(channels_last=args.channels_last)
    steps = {v: step_fn(build(v, args.channels_last), x, y, kernel=v != "gct-torch")
             for v in VARIANTS}
    if args.compile:
        for v in ("plain", "gct"):
            steps[f"{v}+compile"] = step_fn(torch.compile(build(v, args.channels_last)), x, y)
            start = time.perf_counter()
            steps[f"{v}+compile"]()
            print(f"{v}+compile: first step (compiling) {time.perf_counter() - start:.1f} s")
    layout = "channels_last" if args.channels_last else "contiguous"
    checks = [c for n in counts
              for c in measure(steps, n, args.rounds, layout, args.compile)]
    print(verdict(checks))


if __name__ == "__main__":
    main()
