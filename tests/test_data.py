"""In-memory datasets: fixed digits split, batching, batched augmentation, error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gct_ablate.data import Dataset, augment_batch, load_dataset
from gct_ablate.errors import DataError


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_and_normalization(digits: Dataset) -> None:
    assert digits.train_x.shape == (1437, 1, 8, 8) and digits.val_x.shape == (360, 1, 8, 8)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert abs(digits.train_x.mean().item()) < 1e-5
    assert digits.train_x.std().item() == pytest.approx(1.0, abs=1e-4)


def test_digits_split_is_stratified(digits: Dataset) -> None:
    train = torch.bincount(digits.train_y, minlength=10).float()
    val = torch.bincount(digits.val_y, minlength=10).float()
    share = val / (train + val)
    assert torch.all((share - 0.2).abs() < 0.02)


def test_digits_split_is_fixed_whatever_the_seed(digits: Dataset) -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    other = load_dataset("digits", seed=7)
    assert torch.equal(other.val_y, digits.val_y) and torch.equal(other.val_x, digits.val_x)
    assert load_dataset("digits") is digits  # cached per process


def test_to_returns_a_copy(digits: Dataset) -> None:
    moved = digits.to("cpu")
    assert moved is not digits and moved.train_x.device.type == "cpu"


def test_shuffled_epoch_covers_every_sample_once(digits: Dataset) -> None:
    gen = torch.Generator().manual_seed(0)
    seen = []
    sizes = []
    for x, y in digits.batches("train", 100, shuffle=True, generator=gen, augment=True):
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0]
        sizes.append(len(y))
        seen.append(y)
    assert sizes == [100] * 14 + [37]
    assert torch.equal(torch.cat(seen).sort().values, digits.train_y.sort().values)
    assert digits.num_batches("train", 100) == 15


def test_shuffle_indices_are_a_permutation() -> None:
    n = 103
    data = Dataset("t", torch.arange(n).float().view(n, 1, 1, 1), torch.arange(n),
                   torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.int64), n, 1, 1)
    gen = torch.Generator().manual_seed(3)
    ys = torch.cat([y for _, y in data.batches("train", 10, shuffle=True, generator=gen,
                                               augment=False)])
    assert sorted(ys.tolist()) == list(range(n)) and ys.tolist() != list(range(n))
    kept = [y for _, y in data.batches("train", 10, shuffle=False, augment=False, drop_last=True)]
    assert torch.equal(torch.cat(kept), torch.arange(100))


def test_val_batches_in_order(digits: Dataset) -> None:
    ys = torch.cat([y for _, y in digits.batches("val", 256, shuffle=False, augment=False)])
    assert torch.equal(ys, digits.val_y)
    with pytest.raises(ValueError, match="split"):
        next(digits.batches("test", 8, shuffle=False, augment=False))


def test_augmentation_is_deterministic_and_changes_pixels() -> None:
    x = torch.randn(64, 3, 8, 8)

    def run(seed: int) -> torch.Tensor:
        return augment_batch(x, 2, flip=True, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    changed = (a != x).flatten(1).any(1).float().mean()
    assert changed > 0.5  # most images moved or flipped


def test_crop_is_a_translation() -> None:
    x = torch.arange(2 * 36, dtype=torch.float32).view(2, 1, 6, 6)
    out = augment_batch(x, 1, flip=False, pad_mode="constant",
                        generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):  # each output image is one 6x6 window of its padded input
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_dataset_augment_kinds(digits: Dataset) -> None:
    assert (digits.augment, digits.pad) == ("crop", 1)
    gen = torch.Generator().manual_seed(0)
    x, _ = next(digits.batches("train", 32, shuffle=False, generator=gen, augment=True))
    assert x.shape == (32, 1, 8, 8) and not torch.equal(x, digits.train_x[:32])
    x, _ = next(digits.batches("train", 32, shuffle=False, augment=False))
    assert torch.equal(x, digits.train_x[:32])


@pytest.mark.parametrize("name,title", [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")])
def test_missing_cifar_is_a_one_line_error(tmp_path: Path, name: str, title: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name, data_dir=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and title in message
    assert "--download" in message
    assert isinstance(info.value, ValueError)


def _write_images(folder: Path, classes: dict[str, int], size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for label, count in classes.items():
        (folder / label).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")


def test_imagefolder_train_val(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"cat": 3, "dog": 2})
    _write_images(tmp_path / "val", {"cat": 1, "dog": 2})
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8)
    assert data.classes == ("cat", "dog") and data.num_classes == 2
    assert data.train_x.shape == (5, 3, 8, 8) and data.val_x.shape == (3, 3, 8, 8)
    assert data.train_y.tolist() == [0, 0, 0, 1, 1] and data.val_y.tolist() == [0, 1, 1]
    assert data.train_x.dtype == torch.float32 and data.augment == "crop-flip"


def test_imagefolder_single_folder_split(tmp_path: Path) -> None:
    _write_images(tmp_path, {"a": 5, "b": 5})
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.4)
    assert len(data.train_y) == 6 and len(data.val_y) == 4
    assert sorted(data.val_y.tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_imagefolder_errors_name_the_path(tmp_path: Path, make: str) -> None:
    path = tmp_path / "imgs"
    if make == "empty":
        path.mkdir()
    with pytest.raises(DataError, match=str(path)) as info:
        load_dataset("imagefolder", data_dir=str(path))
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="data-dir"):
        load_dataset("imagefolder")


def test_fake() -> None:
    data = load_dataset("fake")
    assert data.train_x.shape == (512, 3, 32, 32) and data.val_x.shape == (128, 3, 32, 32)
    assert data.num_classes == 10 and int(data.train_y.max()) < 10
    assert load_dataset("fake") is data


def test_resize_and_unknown() -> None:
    data = load_dataset("digits", image_size=16)
    assert data.train_x.shape[1:] == (1, 16, 16) and data.image_size == 16 and data.pad == 2
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("mnist")
