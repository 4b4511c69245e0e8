"""``load_dataset``: validation of the arguments, where each dataset is found, caching."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gct_ablate.data import _sources
from gct_ablate.data._memory import Dataset
from gct_ablate.data._splits import stratified_subset
from gct_ablate.data._stream import (
    DEFAULT_MEMORY_BUDGET_GB,
    StreamDataset,
    default_loader_workers,
)
from gct_ablate.errors import DataError
from gct_ablate.factors import DATASETS

DEFAULT_ROOTS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian's package


def default_data_dir() -> Path:
    """``$GCT_ABLATE_DATA`` if set, else ``~/.cache/gct-ablate``."""
    return Path(os.environ.get("GCT_ABLATE_DATA") or "~/.cache/gct-ablate").expanduser()


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.2,
    image_size: int | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    stream: bool | None = None,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    loader_workers: int | None = None,
) -> Dataset | StreamDataset:
    """Load ``name`` on the CPU, cached per process (same arguments, same object): a
    :class:`Dataset`, or a :class:`StreamDataset` for a streamed image folder.

    ``seed`` only picks the random images of ``fake``: real splits and the subsets of
    ``train_size`` / ``val_size`` images (stratified; None: all) are fixed, so every trial
    of a study sees the same images. ``val_fraction`` applies to digits and single-folder
    imagefolder data. ``image_size``: imagefolder's side (default 64 in memory, 224
    streamed); for the others None keeps the native size and a number resizes (bilinear).
    ``stream`` (imagefolder only): True streams, None streams when the in-memory tensors
    would exceed ``memory_budget_gb``; ``loader_workers`` DataLoader processes (default
    :func:`default_loader_workers`). Callers must not modify the returned tensors in place.
    """
    name = name.strip().lower()
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"invalid val_fraction {val_fraction}; must be between 0 and 1")
    for what, value in (("image_size", image_size), ("train_size", train_size),
                        ("val_size", val_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise DataError(f"invalid {what} {value!r}; must be a positive integer")
    if not memory_budget_gb > 0:
        raise DataError(f"invalid memory budget {memory_budget_gb} GB; must be > 0")
    if loader_workers is not None and loader_workers < 0:
        raise DataError(f"invalid loader_workers {loader_workers}; must be >= 0")
    if data_dir:
        root = Path(data_dir).expanduser().resolve()
    else:
        root = DEFAULT_ROOTS.get(name, default_data_dir())
    if name == "imagefolder":
        if data_dir is None:
            raise DataError("imagefolder needs --data-dir DIR (train/ and val/ class folders)")
        workers = default_loader_workers() if loader_workers is None else loader_workers
        return _imagefolder(root, val_fraction, image_size, train_size, val_size, stream,
                            memory_budget_gb, workers)
    if stream:
        raise DataError(f"streaming applies to imagefolder data, not {name}")
    return _sized(name, root, download, seed if name == "fake" else 0,
                  val_fraction if name == "digits" else 0.0, image_size, train_size, val_size)


def _normal_tensors(load: Any) -> Any:
    """``load`` run outside inference mode: what the caches keep are normal tensors whatever
    mode the first caller was in (a dataset first loaded under ``inference_mode``, by an
    evaluation, would otherwise hold inference tensors that later training cannot use)."""

    @functools.wraps(load)
    def outside_inference_mode(*args: Any) -> Any:
        with torch.inference_mode(False):
            return load(*args)

    return outside_inference_mode


_imagefolder = functools.lru_cache(maxsize=4)(_normal_tensors(_sources.imagefolder))


@functools.lru_cache(maxsize=8)
@_normal_tensors
def _sized(name: str, root: Path, download: bool, seed: int, val_fraction: float,
           image_size: int | None, train_size: int | None, val_size: int | None) -> Dataset:
    data = _load(name, root, download, seed, val_fraction)
    title = f"{name}'s %s split"
    data = data.subset(  # the images used, before any conversion
        stratified_subset(data.labels("train"), train_size, "train_size", title % "training"),
        stratified_subset(data.labels("val"), val_size, "val_size", title % "validation"))
    if image_size and image_size != data.image_size:
        check_fits(len(data.train_x) + len(data.val_x), data.in_channels, image_size, name,
                   data.train_x.dtype)
        data = dataclasses.replace(
            data, train_x=_resize(data.train_x, image_size), val_x=_resize(data.val_x, image_size),
            image_size=image_size, pad=max(1, data.pad * image_size // data.image_size))
    return data


@functools.lru_cache(maxsize=4)
@_normal_tensors
def _load(name: str, root: Path, download: bool, seed: int, val_fraction: float) -> Dataset:
    if name == "digits":
        data = _sources.digits(val_fraction)
    elif name in _sources.CIFAR_STATS:
        data = _sources.cifar(name, root, download)
    elif name in _sources.IDX_DATASETS:
        data = _sources.idx_dataset(name, root, download)
    else:
        data = _sources.fake(seed)
    return data


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), else its physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(images: int, channels: int, size: int, name: str, dtype: torch.dtype) -> None:
    """A one-line DataError when ``images`` tensors of ``size`` x ``size`` would not fit in
    the memory this machine has free (the resize holds them all at once)."""
    need = images * channels * size * size * dtype.itemsize
    free = available_memory()
    if free is not None and need > 0.8 * free:
        kind = str(dtype).removeprefix("torch.")
        raise DataError(f"{name} at image_size={size}: {images:,} images x {channels} x "
                        f"{size}x{size} {kind} = {need / 2**30:.1f} GiB, more than the "
                        f"{free / 2**30:.1f} GiB of memory free here; choose a smaller "
                        "image_size")


def _resize(x: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize, a few MB at a time, kept in ``x``'s dtype (uint8
    rounded)."""
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=x.dtype)
    step = max(1, (1 << 22) // (x[0].numel() * 4 + size * size * x.shape[1] * 4))
    for start in range(0, x.shape[0], step):
        chunk = F.interpolate(x[start:start + step].float(), size=(size, size), mode="bilinear",
                              align_corners=False, antialias=True)
        if not x.dtype.is_floating_point:
            chunk = chunk.round_().clamp_(0, 255)
        out[start:start + step] = chunk.to(x.dtype)
    return out
