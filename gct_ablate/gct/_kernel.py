"""The compiled CPU kernel of the fused GCT (``_kernel.c``), loaded through ctypes.

The C file is built with the system C compiler (``$CC``, else ``cc``) on first use, into
``$GCT_ABLATE_CACHE`` (default ``~/.cache/gct_ablate``) under a name that hashes the
source, the flags and the CPU, so a built library is reused by every later process. It is
plain C (no Python or torch headers), built with OpenMP where the compiler has it: its
threads are then torch's own (torch loads libgomp first, and the kernel links the same
soname), so calls wake a standing pool instead of starting threads.

Before first use the library is checked twice: its interface (the C side reports the
layout of its ``Cfg`` struct and its enum values, compared with this module's copy) and
its maths (every p mode, norm and activation on a small input, forward and backward,
against the eager formula in float64). On any failure, or without a compiler, or with
``GCT_ABLATE_KERNEL=eager``, :func:`library` is None, the fused GCT uses its eager torch
path, one warning line says why, and :func:`describe` says so too.

It covers float32 CPU tensors in NCHW-contiguous or channels_last layout, every p, norm and
activation: the embedding for p in {1, 2, 3, 4, inf, gap} is computed in C (any other p: by
the caller, in torch, with ``h = sign(x) |x|^(p-1)`` for the backward).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from gct_ablate._util import cache_dir
from gct_ablate.gct._config import ACTIVATIONS, NORMS, GCTConfig
from gct_ablate.gct._reference import gct_reference

SOURCE = Path(__file__).with_name("_kernel.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math",
         "-fassociative-math", "-fno-signed-zeros", "-fPIC", "-shared")
OPENMP = ("-fopenmp",)  # dropped when the compiler has no OpenMP: the kernel then runs one thread
LIBS = ("-lm",)
_P_INF, _P_GIVEN = 1, 4  # p modes of the C file; _P_GIVEN: E is computed by the caller
_PMODE = {"gap": 0, math.inf: _P_INF, 1.0: 2, 2.0: 3, 3.0: 5, 4.0: 6}
_NORM = {"l2": 0, "l1": 1, "layer": 2, "none": 3}
_ACT = {"tanh": 0, "sigmoid": 1, "softsign": 2, "hardtanh": 3, "erf": 4}
# Elements of one share of rows: a share runs on one thread, so a tensor of fewer than two
# shares stays on the calling thread (see benchmarks/README.md for the measured crossover).
SHARE_ELEMENTS = 1 << 17


class _Cfg(ctypes.Structure):
    _fields_ = [("B", ctypes.c_int64), ("C", ctypes.c_int64), ("HW", ctypes.c_int64),
                ("channels_last", ctypes.c_int32), ("pmode", ctypes.c_int32),
                ("after_relu", ctypes.c_int32), ("norm", ctypes.c_int32),
                ("act", ctypes.c_int32), ("threads", ctypes.c_int32),
                ("rows", ctypes.c_int64), ("p", ctypes.c_double), ("eps", ctypes.c_double)]


class _Status(NamedTuple):
    lib: ctypes.CDLL | None
    text: str


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build(compiler: str, openmp: bool = True) -> Path:
    flags = (*FLAGS, *OPENMP) if openmp else FLAGS
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join((compiler, *flags, *LIBS)).encode(),
                                     _cpu_id().encode()])).hexdigest()[:16]
    target = cache_dir() / f"gct_kernel-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE), *LIBS], check=True,
                       capture_output=True, timeout=120)
        os.replace(tmp, target)  # atomic: processes building at once all end with one file
    except subprocess.CalledProcessError:
        if not openmp:
            raise
        return _build(compiler, openmp=False)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def expected_interface() -> dict[str, int]:
    """What the C side must report: this module's struct layout and enum values."""
    out = {"sizeof": ctypes.sizeof(_Cfg)}
    out.update({name: getattr(_Cfg, name).offset for name, _ in _Cfg._fields_})
    out.update(P_GAP=_PMODE["gap"], P_INF=_PMODE[math.inf], P_ONE=_PMODE[1.0],
               P_TWO=_PMODE[2.0], P_GIVEN=_P_GIVEN, P_THREE=_PMODE[3.0], P_FOUR=_PMODE[4.0])
    out.update({f"N_{name.upper()}": value for name, value in _NORM.items()})
    out.update({f"A_{name.upper()}": value for name, value in _ACT.items()})
    return out


def interface_mismatch(reported: str) -> str | None:
    """None when the C side's ``name=value`` words agree with :func:`expected_interface`,
    else the first few disagreements."""
    got = dict(word.split("=", 1) for word in reported.split())
    bad = [f"{name}: C {got.get(name, 'missing')}, Python {value}"
           for name, value in expected_interface().items() if got.get(name) != str(value)]
    return "; ".join(bad[:3]) if bad else None


def _eager(reason: str, warn: bool = True) -> _Status:
    if warn:
        warnings.warn(f"GCT C kernel not used ({reason}); using the eager torch path",
                      RuntimeWarning, stacklevel=3)
    return _Status(None, f"eager torch ({reason})")


def _open(compiler: str) -> tuple[ctypes.CDLL, Path]:
    path = _build(compiler)
    lib = ctypes.CDLL(str(path))
    ptr = ctypes.c_void_p
    cfg = ctypes.POINTER(_Cfg)
    lib.gct_interface.argtypes = []
    lib.gct_interface.restype = ctypes.c_char_p
    lib.gct_forward.argtypes = [cfg, *[ptr] * 7]
    lib.gct_backward.argtypes = [cfg, *[ptr] * 10]
    lib.gct_forward.restype = lib.gct_backward.restype = ctypes.c_int
    return lib, path


@functools.cache
def _load() -> _Status:
    if os.environ.get("GCT_ABLATE_KERNEL", "").lower() == "eager":
        return _eager("GCT_ABLATE_KERNEL=eager", warn=False)
    compiler = os.environ.get("CC") or "cc"
    if not shutil.which(compiler):
        return _eager(f"no C compiler {compiler!r} found", warn=False)
    try:
        lib, path = _open(compiler)
    except (OSError, AttributeError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or str(exc).encode()
        first = detail.decode(errors="replace").strip().splitlines()[:1]
        return _eager(f"building the C kernel failed: {' '.join(first)}")
    reported = lib.gct_interface().decode()
    if mismatch := interface_mismatch(reported):
        return _eager(f"interface mismatch with {path.name}: {mismatch}")
    if failure := self_check(lib):
        return _eager(f"self-check failed: {failure}")
    threads = "OpenMP threads" if "openmp=1" in reported.split() else "one thread, no OpenMP"
    return _Status(lib, f"compiled C kernel ({path}; {threads})")


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when the eager torch path is in use."""
    return _load().lib


def describe() -> str:
    """Which implementation a float32 CPU GCT runs, and why."""
    return _load().text


def applies(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor) -> bool:
    """True when the kernel can take this input: float32 CPU, NCHW or channels_last
    (not CUDA, MPS or meta tensors: the kernel reads host memory through data_ptr)."""
    if x.dtype != torch.float32 or not x.is_cpu or x.dim() != 4 or not x.numel():
        return False
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    for t in (alpha, gamma, beta):
        if (t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous()
                or t.numel() != x.shape[1]):
            return False
    return library() is not None


class _Plan(NamedTuple):
    """What every call on one input shape and configuration needs (built once, cached)."""

    cfg: _Cfg
    given: bool  # E is computed by the caller, in torch (a p other than 1, 2, 3, 4, inf, gap)
    inf: bool  # p = inf: argmax indices are kept
    stats: tuple[int, int, int]  # (3, B, C)
    pgrad: tuple[int, ...]  # (3, *parameter shape)
    layout: torch.memory_format


@functools.lru_cache(maxsize=256)
def _plan(shape: torch.Size, channels_last: bool, cfg: GCTConfig, threads: int,
          param_shape: torch.Size) -> _Plan:
    b, c, h, w = shape
    rows = max(1, -(-SHARE_ELEMENTS // (c * h * w)))  # from the shape alone: see _kernel.c
    p = 0.0 if isinstance(cfg.p, str) or math.isinf(cfg.p) else float(cfg.p)
    pmode = _PMODE.get(cfg.p, _P_GIVEN)
    k = _Cfg(b, c, h * w, channels_last, pmode, bool(cfg.after_relu), _NORM[cfg.norm],
             _ACT[cfg.activation], threads, rows, p, cfg.eps)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return _Plan(k, pmode == _P_GIVEN, pmode == _P_INF, (3, b, c), (3, *param_shape), layout)


def _given_embedding(x: Tensor, cfg: GCTConfig) -> Tensor:
    """E for a p the kernel does not reduce itself: (sum |x|^p + eps)^(1/p), in torch."""
    return x.abs().pow_(cfg.p).sum(dim=(2, 3)).add_(cfg.eps).pow_(1.0 / cfg.p)


def forward(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, cfg: GCTConfig,
            write_y: bool = True, lib: ctypes.CDLL | None = None, plan: _Plan | None = None
            ) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(y or None, stats, argmax indices for p = inf or None).

    ``stats`` is (3, B, C): the embedding E, the gate and its derivative; idx is (B, C).
    Called once per GCT per step: kept lean (a cached plan, no per-call tuple building).
    """
    plan = plan or _plan(x.shape, not x.is_contiguous(), cfg, torch.get_num_threads(),
                         alpha.shape)
    stats = torch.empty(*plan.stats, dtype=torch.float32)  # whatever the default dtype
    if plan.given:
        stats[0] = _given_embedding(x, cfg)
    idx = torch.empty(plan.stats[1:], dtype=torch.int64) if plan.inf else None
    y = torch.empty_like(x) if write_y else None  # x is dense: the same strides
    if (lib or library()).gct_forward(plan.cfg, x.data_ptr(), alpha.data_ptr(), gamma.data_ptr(),
                             beta.data_ptr(), stats.data_ptr(),
                             None if idx is None else idx.data_ptr(),
                             None if y is None else y.data_ptr()):
        raise MemoryError("GCT kernel: out of memory")
    return y, stats, idx


def backward(dy: Tensor, x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, stats: Tensor,
             idx: Tensor | None, cfg: GCTConfig, need_dx: bool = True,
             lib: ctypes.CDLL | None = None, plan: _Plan | None = None
             ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """(dx or None, dalpha, dgamma, dbeta), the parameter gradients shaped like alpha."""
    plan = plan or _plan(x.shape, not x.is_contiguous(), cfg, torch.get_num_threads(),
                         alpha.shape)
    if dy.dtype != torch.float32:
        dy = dy.float()
    if dy.stride() != x.stride():  # the kernel reads both in the layout of x
        dy = dy.contiguous(memory_format=plan.layout)
    h = None
    if plan.given and need_dx:
        h = torch.copysign(x.abs().pow_(cfg.p - 1.0), x)
    dx = torch.empty_like(x) if need_dx else None
    pgrad = torch.empty(*plan.pgrad, dtype=torch.float32)
    if (lib or library()).gct_backward(plan.cfg, dy.data_ptr(), x.data_ptr(),
                              None if h is None else h.data_ptr(), alpha.data_ptr(),
                              gamma.data_ptr(), beta.data_ptr(), stats.data_ptr(),
                              None if idx is None else idx.data_ptr(),
                              None if dx is None else dx.data_ptr(), pgrad.data_ptr()):
        raise MemoryError("GCT kernel: out of memory")
    return (dx, *pgrad.unbind(0))


# ------------------------------------------------------------------ self-check at load
SELF_CHECK_PS: tuple[float | str, ...] = ("gap", math.inf, 1.0, 2.0, 3.0, 4.0, 1.5)
SELF_CHECK_TOLERANCE = 1e-4  # float32 kernel against float64 maths, relative to the scale


def _check_case(lib: ctypes.CDLL, cfg: GCTConfig, channels_last: bool, seed: int) -> str | None:
    g = torch.Generator().manual_seed(seed)
    x64, dy64 = (torch.randn(5, 6, 3, 4, generator=g, dtype=torch.float64) for _ in "xy")
    params64 = [torch.randn(1, 6, 1, 1, generator=g, dtype=torch.float64) * 0.5 + shift
                for shift in (1.0, 0.0, 0.0)]
    if cfg.after_relu:
        x64 = x64.relu()
    x32 = x64.float().contiguous(memory_format=torch.channels_last if channels_last
                                 else torch.contiguous_format)
    p32 = [t.float() for t in params64]
    leaves = [t.clone().requires_grad_() for t in (x64, *params64)]
    options = dict(p=cfg.p, norm=cfg.norm, activation=cfg.activation,
                   after_relu=cfg.after_relu, eps=cfg.eps)
    y64 = gct_reference(*leaves, **options)
    truth = [y64, *torch.autograd.grad(y64, leaves, dy64)]
    # A plan of its own (the cached ones stay untouched), with three shares: the split and
    # the sum over shares are exercised.
    plan = _plan.__wrapped__(x32.shape, channels_last, cfg, torch.get_num_threads(),
                             p32[0].shape)
    plan.cfg.rows = 2
    y, stats, idx = forward(x32, *p32, cfg, lib=lib, plan=plan)
    grads = backward(dy64.float(), x32, *p32, stats, idx, cfg, lib=lib, plan=plan)
    for name, got, want in zip(("y", "dx", "dalpha", "dgamma", "dbeta"), (y, *grads), truth,
                               strict=True):
        err = (got.double() - want).abs().max().item() / (want.abs().max().item() + 1.0)
        if not err <= SELF_CHECK_TOLERANCE:  # (a NaN fails too)
            return f"{name} off by {err:.1e} at p={cfg.p}, {cfg.norm}, {cfg.activation}"
    return None


def self_check(lib: ctypes.CDLL) -> str | None:
    """None when the kernel agrees with the float64 formula on every p mode, norm and
    activation (forward and backward, both layouts), else what disagreed.

    Whatever state the caller is in (the first GCT call of a process may come under
    ``no_grad``, ``inference_mode`` or autocast, with any thread count or default dtype),
    the check runs with autograd on, autocast off and explicit dtypes, so its outcome is
    the same for every caller.
    """
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        for i, p in enumerate(SELF_CHECK_PS):
            cfg = GCTConfig(p, NORMS[i % len(NORMS)], ACTIVATIONS[i % len(ACTIVATIONS)],
                            after_relu=p == 1.0, eps=1e-5)
            if failure := _check_case(lib, cfg, channels_last=bool(i % 2), seed=i):
                return failure
    return None
