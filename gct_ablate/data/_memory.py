"""In-memory datasets: images as stored (uint8, NCHW), normalized and augmented per batch
(airbench style) on the data's device.

``Dataset.to(device)`` moves every tensor once (uint8: a quarter of float32's bytes); each
batch is converted to float32, normalized by the dataset's per-channel mean and standard
deviation, and augmented (random translation by padding and cropping, plus horizontal flips
for natural images) on whole batches with tensor ops, deterministic for a given
``torch.Generator``. The tensors may be memory-mapped from a shared cache file
(:mod:`gct_ablate.data._arrays`): they are never written to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gct_ablate.data._base import check_split, count_batches

AUGMENTS = ("none", "crop", "crop-flip")


@dataclass(frozen=True)
class Dataset:
    """Train and validation tensors: x NCHW as stored (uint8, or float32), y int64.

    A batch is ``(x.float() - mean) / std``, per channel (one value: every channel).
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
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on ``device`` (the cached CPU copy is not changed)."""
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y")}
        return dataclasses.replace(self, **moved)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def size(self, split: str) -> int:
        return self._split(split)[1].numel()

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        return count_batches(self.size(split), batch_size, drop_last)

    def generator(self, seed: int) -> torch.Generator:
        """A generator for :meth:`batches`, on the data's device (no host round trips)."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def normalized(self, split: str) -> Tensor:
        """Every image of ``split`` as the network sees it (float32, normalized)."""
        x = self._split(split)[0]
        return _normalize(x, *self._moments(x.device))

    def _moments(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std as (1, C, 1, 1) float32 tensors on ``device``."""
        return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                     for v in (self.mean, self.std))  # type: ignore[return-value]

    def labels(self, split: str) -> list[int]:
        return self._split(split)[1].tolist()

    def subset(self, train: Sequence[int] | None, val: Sequence[int] | None) -> Dataset:
        """A copy holding only the given images of each split (None, or every image in
        order, keeps the tensors themselves)."""
        changes = {}
        for split, index in (("train", train), ("val", val)):
            if index is not None and list(index) != list(range(self.size(split))):
                x, y = self._split(split)
                idx = torch.as_tensor(index, dtype=torch.int64, device=y.device)
                changes[f"{split}_x"], changes[f"{split}_y"] = x[idx], y[idx]
        return dataclasses.replace(self, **changes)

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        check_split(split)
        return (self.train_x, self.train_y) if split == "train" else (self.val_x, self.val_y)

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
        mean, std = self._moments(x.device)  # once an epoch, not per batch
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                xb, yb = x[idx], y[idx]
            xb = _normalize(xb, mean, std)
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


def _normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``x`` (uint8 or float) as float32, less ``mean``, over ``std`` (per channel)."""
    return (x.float() - mean).div_(std)
