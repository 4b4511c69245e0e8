"""The first GCT call of a fresh interpreter, whatever state it is made in.

The CPU kernel loads and checks itself lazily, at the first float32 GCT call of a process:
its outcome must not depend on the caller's autograd mode, autocast, thread count or
default dtype. Only a new interpreter reaches that first call (in this process an earlier
test has loaded the kernel already), so each case runs in its own subprocess, with its own
kernel cache folder (the kernel is built there, then checked).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_SCRIPT = textwrap.dedent("""
    import sys, warnings
    import torch
    warnings.simplefilter("error", RuntimeWarning)  # "C kernel not used" fails the case
    from gct_ablate.gct import GCT, gct_reference, kernel_description

    torch.set_num_threads(int(sys.argv[2]))
    if sys.argv[3] == "float64":
        torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    gct = GCT(16, p=sys.argv[4], norm="l2", activation="tanh").float()
    with torch.no_grad():
        gct.gamma.normal_().mul_(0.5)
        gct.beta.normal_().mul_(0.5)
    x = torch.randn(4, 16, 6, 6, dtype=torch.float32)
    mode = sys.argv[1]
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
               "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
               "grad": torch.enable_grad}[mode]
    with context():
        y = gct(x)  # the first GCT call of this process
    assert "compiled C kernel" in kernel_description(), kernel_description()
    want = gct_reference(x.double(), gct.alpha.double(), gct.gamma.double(),
                         gct.beta.double(), **gct.config._asdict())
    err = (y.double() - want).abs().max().item()
    assert y.dtype == torch.float32 and err < 1e-4, (y.dtype, err)
    # Autograd works afterwards, in the same process, through the kernel.
    xg = x.clone().requires_grad_()
    gct(xg).square().sum().backward()
    xr = x.double().clone().requires_grad_()
    gct_reference(xr, gct.alpha.double(), gct.gamma.double(), gct.beta.double(),
                  **gct.config._asdict()).square().sum().backward()
    assert (xg.grad.double() - xr.grad).abs().max().item() < 1e-3
    print("ok", mode, err)
""")


def _first_call(tmp_path: Path, mode: str, threads: int = 1, dtype: str = "float32",
                p: str = "2") -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GCT_ABLATE_KERNEL",)}
    env["GCT_ABLATE_CACHE"] = str(tmp_path / "cache")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, mode, str(threads), dtype, p],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"ok {mode}"), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def built_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the built kernel: each case copies it, so the compiler runs once."""
    folder = tmp_path_factory.mktemp("kernel-build")
    _first_call(folder, "grad")
    return folder / "cache"


def _case(tmp_path: Path, built: Path, mode: str, **options: object) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for lib in built.glob("gct_kernel-*.so"):
        (cache / lib.name).write_bytes(lib.read_bytes())
    _first_call(tmp_path, mode, **options)


def test_first_gct_call_of_a_fresh_process_under_no_grad(tmp_path: Path,
                                                         built_kernel: Path) -> None:
    _case(tmp_path, built_kernel, "no_grad")


def test_first_gct_call_of_a_fresh_process_under_inference_mode(tmp_path: Path,
                                                                built_kernel: Path) -> None:
    _case(tmp_path, built_kernel, "inference_mode", p="inf")


def test_first_gct_call_under_autocast_two_threads_and_float64_default(
        tmp_path: Path, built_kernel: Path) -> None:
    _case(tmp_path, built_kernel, "autocast", threads=2, dtype="float64", p="1.5")


def test_datasets_first_loaded_under_inference_mode_and_float64_serve_training() -> None:
    """The per-process dataset caches keep what the first caller got: normal uint8 tensors
    (not inference tensors), whose batches are float32 even when that caller was an
    evaluation under inference_mode with a float64 default dtype."""
    import torch

    from gct_ablate.data import _load, load_dataset

    _load._load.cache_clear()
    _load._sized.cache_clear()
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        with torch.inference_mode():
            first = [load_dataset(name, train_size=60, val_size=30) for name in ("digits", "fake")]
    finally:
        torch.set_default_dtype(before)
        _load._load.cache_clear()
        _load._sized.cache_clear()
    for data in first:
        for t in (data.train_x, data.val_x):
            assert t.dtype == torch.uint8 and not t.is_inference(), data.name
        x = data.normalized("train")
        assert x.dtype == torch.float32 and not x.is_inference(), data.name
        weight = torch.zeros(x[0].numel(), requires_grad=True)
        (x.flatten(1) @ weight).sum().backward()  # usable by autograd
        assert weight.grad is not None
