"""Datasets as in-memory tensors with batched augmentation (airbench style).

Each dataset is loaded once per process (``functools.lru_cache``) into float32, normalized,
NCHW CPU tensors; ``Dataset.to(device)`` moves them. Augmentation (random translation by
padding and cropping, plus horizontal flips for natural images) is done on whole batches
with tensor ops, deterministic for a given ``torch.Generator``.

Datasets:

- ``digits``: scikit-learn's 8x8 digits (1797 images, offline). A stratified train /
  validation split with ``random_state=0`` that never depends on the trial seed; pixels
  normalized by the training mean / std; augmentation: +-1 pixel translation, no flip.
- ``cifar10`` / ``cifar100``: torchvision files under ``data_dir`` (default
  ``$GCT_ABLATE_DATA`` or ``~/.cache/gct-ablate``); the official test set is the validation
  set. About 740 MB of float32 tensors.
- ``imagefolder``: ``data_dir`` with ``train/`` and ``val/`` folders of class folders, or a
  single folder of class folders split (stratified, ``random_state=0``) by ``val_fraction``.
  Images are resized and center-cropped to ``image_size`` (default 64) and kept in memory:
  ``N * 3 * image_size^2 * 4`` bytes, about 0.65 GB for Imagenette at 64 px, 8 GB at 224 px.
- ``fake``: torchvision ``FakeData``, 512 train / 128 validation 3x32x32 images, 10 classes
  (random labels: for smoke tests only).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gct_ablate.errors import DataError
from gct_ablate.factors import DATASETS

AUGMENTS = ("none", "crop", "crop-flip")
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class Dataset:
    """Train and validation tensors: x float32 normalized NCHW, y int64.

    ``augment`` is "none", "crop" (random translation by up to ``pad`` pixels) or
    "crop-flip" (translation plus horizontal flip); ``pad_mode`` is F.pad's mode.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    in_channels: int
    image_size: int
    augment: str = "none"
    pad: int = 4
    pad_mode: str = "reflect"
    classes: tuple[str, ...] = ()

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on ``device`` (the cached CPU copy is not changed)."""
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y")}
        return dataclasses.replace(self, **moved)

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        n = self._split(split)[1].numel()
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "train":
            return self.train_x, self.train_y
        if split == "val":
            return self.val_x, self.val_y
        raise ValueError(f"unknown split {split!r}; valid: train, val")

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        augment: bool,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of (x, y) batches; the last may be smaller unless ``drop_last``.

        Random numbers come from ``generator`` (on its own device, else the global CPU one)
        and are moved to the data's device, so results are reproducible given the generator.
        """
        x, y = self._split(split)
        n = y.numel()
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = (torch.randperm(n, generator=generator, device=gen_device).to(y.device)
                 if shuffle else None)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                xb, yb = x[idx], y[idx]
            if augment and self.augment != "none":
                xb = augment_batch(xb, self.pad, flip=self.augment == "crop-flip",
                                   pad_mode=self.pad_mode, generator=generator)
            yield xb, yb


def augment_batch(x: Tensor, pad: int, *, flip: bool, pad_mode: str = "reflect",
                  generator: torch.Generator | None = None) -> Tensor:
    """Random translation of each image by up to ``pad`` pixels (pad, then crop), and a
    horizontal flip with probability 1/2 if ``flip``; vectorized over the batch."""
    b, _, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode=pad_mode)
        shift = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=gen_device)
        shift = shift.to(x.device)
        rows = (shift[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (shift[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
        padded = padded.gather(2, rows.expand(b, x.shape[1], h, padded.shape[3]))
        x = padded.gather(3, cols.expand(b, x.shape[1], h, w))
    if flip:
        mask = torch.rand(b, generator=generator, device=gen_device).to(x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


# ----------------------------------------------------------------------------- loading
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
) -> Dataset:
    """Load ``name`` as CPU tensors, cached per process (same arguments, same object).

    ``seed`` only picks the random images of ``fake``: real splits are fixed
    (``random_state=0``) so every trial of a study sees the same validation set.
    ``val_fraction`` applies to digits and single-folder imagefolder data. ``image_size``
    is imagefolder's side (default 64); for the others None keeps the native size and a
    number resizes (bilinear). Callers must not modify the returned tensors in place.
    """
    name = name.strip().lower()
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"invalid val_fraction {val_fraction}; must be between 0 and 1")
    if name == "imagefolder":
        if data_dir is None:
            raise DataError("imagefolder needs --data-dir DIR (train/ and val/ class folders)")
        image_size = image_size or 64
    root = str(Path(data_dir).expanduser().resolve()) if data_dir else str(default_data_dir())
    return _load(name, root, download, seed if name == "fake" else 0,
                 val_fraction if name in ("digits", "imagefolder") else 0.0, image_size)


@functools.lru_cache(maxsize=4)
def _load(name: str, root: str, download: bool, seed: int, val_fraction: float,
          image_size: int | None) -> Dataset:
    if name == "digits":
        data = _digits(val_fraction)
    elif name in CIFAR_STATS:
        data = _cifar(name, root, download)
    elif name == "fake":
        data = _fake(seed)
    else:
        return _imagefolder(Path(root), val_fraction, image_size or 64)
    if image_size and image_size != data.image_size:
        data = dataclasses.replace(
            data, train_x=_resize(data.train_x, image_size), val_x=_resize(data.val_x, image_size),
            image_size=image_size, pad=max(1, data.pad * image_size // data.image_size))
    return data


def _resize(x: Tensor, size: int) -> Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def _normalize(train: Tensor, val: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    return (train - mean) / std, (val - mean) / std


def _stratified_split(labels: list[int] | Tensor, val_fraction: float) -> tuple[list, list]:
    from sklearn.model_selection import train_test_split

    index = list(range(len(labels)))
    try:
        train, val = train_test_split(index, test_size=val_fraction, random_state=0,
                                      stratify=list(map(int, labels)))
    except ValueError as err:
        raise DataError(f"cannot split {len(index)} images into train and validation: {err}"
                        ) from None
    return sorted(train), sorted(val)


def _digits(val_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train, val = _stratified_split(y, val_fraction)
    tx, vx = x[train], x[val]
    tx, vx = _normalize(tx, vx, tx.mean().view(1), tx.std().view(1))
    return Dataset("digits", tx, y[train], vx, y[val], 10, 1, 8, "crop", 1, "replicate",
                   tuple(str(c) for c in range(10)))


def _cifar(name: str, root: str, download: bool) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    try:
        train = cls(root, train=True, download=download)
        val = cls(root, train=False, download=download)
    except RuntimeError:
        raise DataError(f"{title} not found in {root}; pass --download or --data-dir DIR"
                        ) from None
    except OSError as err:
        raise DataError(f"{title}: cannot read or download into {root} ({err})") from None

    def tensors(ds) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
        return x.contiguous(), torch.tensor(ds.targets, dtype=torch.int64)

    (tx, ty), (vx, vy) = tensors(train), tensors(val)
    mean, std = (torch.tensor(v) for v in CIFAR_STATS[name])
    tx, vx = _normalize(tx, vx, mean, std)
    return Dataset(name, tx, ty, vx, vy, len(train.classes), 3, 32, "crop-flip", 4, "reflect",
                   tuple(train.classes))


def _stack(ds, index: list[int] | None = None) -> tuple[Tensor, Tensor]:
    index = range(len(ds)) if index is None else index
    pairs = [ds[i] for i in index]
    return (torch.stack([p[0] for p in pairs]),
            torch.tensor([int(p[1]) for p in pairs], dtype=torch.int64))


def _fake(seed: int) -> Dataset:
    from torchvision import datasets, transforms

    offset = seed * 1_000_003
    kw = dict(image_size=(3, 32, 32), num_classes=10, transform=transforms.ToTensor())
    tx, ty = _stack(datasets.FakeData(size=512, random_offset=offset, **kw))
    vx, vy = _stack(datasets.FakeData(size=128, random_offset=offset + 512, **kw))
    half = torch.full((3,), 0.5)
    tx, vx = _normalize(tx, vx, half, half)
    return Dataset("fake", tx, ty, vx, vy, 10, 3, 32, "crop-flip", 4, "reflect",
                   tuple(str(c) for c in range(10)))


def _image_folder(path: Path, size: int):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                             transforms.ToTensor()])
    try:
        return datasets.ImageFolder(str(path), transform=tf)
    except (FileNotFoundError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else "no images"
        raise DataError(f"no usable image folder at {path}: {reason}") from None


def _imagefolder(root: Path, val_fraction: float, size: int) -> Dataset:
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; pass --data-dir DIR with train/ and "
                        "val/ class folders")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = _image_folder(root / "train", size), _image_folder(root / "val", size)
        if train.classes != val.classes:
            raise DataError(f"{root}: train/ and val/ have different class folders")
        (tx, ty), (vx, vy) = _stack(train), _stack(val)
        classes = train.classes
    else:
        full = _image_folder(root, size)
        train_idx, val_idx = _stratified_split(full.targets, val_fraction)
        (tx, ty), (vx, vy) = _stack(full, train_idx), _stack(full, val_idx)
        classes = full.classes
    mean, std = tx.mean(dim=(0, 2, 3)), tx.std(dim=(0, 2, 3)).clamp_min(1e-6)
    tx, vx = _normalize(tx, vx, mean, std)
    return Dataset("imagefolder", tx, ty, vx, vy, len(classes), 3, size, "crop-flip",
                   max(1, size // 8), "reflect", tuple(classes))
