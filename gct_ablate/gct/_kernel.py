"""The compiled CPU kernel of the fused GCT (``_kernel.c``), loaded through ctypes.

The C file is built with the system C compiler (``$CC``, else ``cc``) on first use, into
``$GCT_ABLATE_CACHE`` (default ``~/.cache/gct_ablate``) under a name that hashes the
source, the flags and the CPU, so a built library is reused by every later process. It is
plain C (no Python or torch headers): building takes about a second. Without a compiler,
or with ``GCT_ABLATE_KERNEL=eager``, :func:`library` is None and the fused GCT uses its
eager torch path; :func:`describe` says which and why.

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
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from gct_ablate.gct._config import GCTConfig

SOURCE = Path(__file__).with_name("_kernel.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math",
         "-fassociative-math", "-fno-signed-zeros", "-fPIC", "-shared")
LIBS = ("-lm", "-pthread")
_P_INF, _P_GIVEN = 1, 4  # p modes of the C file; _P_GIVEN: E is computed by the caller
_PMODE = {"gap": 0, math.inf: _P_INF, 1.0: 2, 2.0: 3, 3.0: 5, 4.0: 6}
_NORM = {"l2": 0, "l1": 1, "layer": 2, "none": 3}
_ACT = {"tanh": 0, "sigmoid": 1, "softsign": 2, "hardtanh": 3, "erf": 4}
_MIN_PER_THREAD = 1 << 15  # elements: below this a thread costs more than it saves


class _Cfg(ctypes.Structure):
    _fields_ = [("B", ctypes.c_int64), ("C", ctypes.c_int64), ("HW", ctypes.c_int64),
                ("channels_last", ctypes.c_int32), ("pmode", ctypes.c_int32),
                ("after_relu", ctypes.c_int32), ("norm", ctypes.c_int32),
                ("act", ctypes.c_int32), ("threads", ctypes.c_int32),
                ("p", ctypes.c_double), ("eps", ctypes.c_double)]


class _Status(NamedTuple):
    lib: ctypes.CDLL | None
    text: str


def _cache_dir() -> Path:
    base = os.environ.get("GCT_ABLATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gct_ablate")
    return Path(base)


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join((compiler, *FLAGS, *LIBS)).encode(),
                                     _cpu_id().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"gct_kernel-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), *LIBS], check=True,
                       capture_output=True, timeout=120)
        os.replace(tmp, target)  # atomic: processes building at once all end with one file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def _load() -> _Status:
    if os.environ.get("GCT_ABLATE_KERNEL", "").lower() == "eager":
        return _Status(None, "eager torch (GCT_ABLATE_KERNEL=eager)")
    compiler = os.environ.get("CC") or "cc"
    if not shutil.which(compiler):
        return _Status(None, f"eager torch (no C compiler {compiler!r} found)")
    try:
        path = _build(compiler)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or str(exc).encode()
        first = detail.decode(errors="replace").strip().splitlines()[:1]
        return _Status(None, f"eager torch (building the C kernel failed: {' '.join(first)})")
    ptr = ctypes.c_void_p
    cfg = ctypes.POINTER(_Cfg)
    lib.gct_forward.argtypes = [cfg, *[ptr] * 7]
    lib.gct_backward.argtypes = [cfg, *[ptr] * 10]
    lib.gct_forward.restype = lib.gct_backward.restype = ctypes.c_int
    return _Status(lib, f"compiled C kernel ({path})")


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
    threads = max(1, min(threads, b * c * h * w // _MIN_PER_THREAD))
    p = 0.0 if isinstance(cfg.p, str) or math.isinf(cfg.p) else float(cfg.p)
    pmode = _PMODE.get(cfg.p, _P_GIVEN)
    k = _Cfg(b, c, h * w, channels_last, pmode, bool(cfg.after_relu), _NORM[cfg.norm],
             _ACT[cfg.activation], threads, p, cfg.eps)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return _Plan(k, pmode == _P_GIVEN, pmode == _P_INF, (3, b, c), (3, *param_shape), layout)


def _given_embedding(x: Tensor, cfg: GCTConfig) -> Tensor:
    """E for a p the kernel does not reduce itself: (sum |x|^p + eps)^(1/p), in torch."""
    return x.abs().pow_(cfg.p).sum(dim=(2, 3)).add_(cfg.eps).pow_(1.0 / cfg.p)


def forward(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, cfg: GCTConfig,
            write_y: bool = True
            ) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(y or None, stats, argmax indices for p = inf or None).

    ``stats`` is (3, B, C): the embedding E, the gate and its derivative; idx is (B, C).
    Called once per GCT per step: kept lean (a cached plan, no per-call tuple building).
    """
    plan = _plan(x.shape, not x.is_contiguous(), cfg, torch.get_num_threads(), alpha.shape)
    stats = torch.empty(*plan.stats)  # (varargs: a third faster than a tuple)
    if plan.given:
        stats[0] = _given_embedding(x, cfg)
    idx = torch.empty(plan.stats[1:], dtype=torch.int64) if plan.inf else None
    y = torch.empty_like(x) if write_y else None  # x is dense: the same strides
    if library().gct_forward(plan.cfg, x.data_ptr(), alpha.data_ptr(), gamma.data_ptr(),
                             beta.data_ptr(), stats.data_ptr(),
                             None if idx is None else idx.data_ptr(),
                             None if y is None else y.data_ptr()):
        raise MemoryError("GCT kernel: out of memory")
    return y, stats, idx


def backward(dy: Tensor, x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, stats: Tensor,
             idx: Tensor | None, cfg: GCTConfig, need_dx: bool = True
             ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """(dx or None, dalpha, dgamma, dbeta), the parameter gradients shaped like alpha."""
    plan = _plan(x.shape, not x.is_contiguous(), cfg, torch.get_num_threads(), alpha.shape)
    if dy.dtype != torch.float32:
        dy = dy.float()
    if dy.stride() != x.stride():  # the kernel reads both in the layout of x
        dy = dy.contiguous(memory_format=plan.layout)
    h = None
    if plan.given and need_dx:
        h = torch.copysign(x.abs().pow_(cfg.p - 1.0), x)
    dx = torch.empty_like(x) if need_dx else None
    pgrad = torch.empty(*plan.pgrad)
    if library().gct_backward(plan.cfg, dy.data_ptr(), x.data_ptr(),
                              None if h is None else h.data_ptr(), alpha.data_ptr(),
                              gamma.data_ptr(), beta.data_ptr(), stats.data_ptr(),
                              None if idx is None else idx.data_ptr(),
                              None if dx is None else dx.data_ptr(), pgrad.data_ptr()):
        raise MemoryError("GCT kernel: out of memory")
    return (dx, *pgrad.unbind(0))
