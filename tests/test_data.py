"""Datasets: digits, idx files (MNIST, real Fashion-MNIST), CIFAR-format folders and JPEG
trees through torchvision, fixed subsets, the streamed image folder, error messages."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gct_ablate.data import (
    STREAM_IMAGE_SIZE,
    Dataset,
    StreamDataset,
    augment_batch,
    load_dataset,
    memory_estimate,
    read_idx,
    should_stream,
    stratified_subset,
)
from gct_ablate.errors import DataError, FactorError, SpecError
from gct_ablate.factors import parse_level
from gct_ablate.spec import TrialConfig
from gct_ablate.train import build_trial, train_eval


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_and_normalization(digits: Dataset) -> None:
    assert digits.train_x.shape == (1437, 1, 8, 8) and digits.val_x.shape == (360, 1, 8, 8)
    assert digits.train_x.dtype == torch.uint8 and digits.train_y.dtype == torch.int64
    assert int(digits.train_x.max()) == 16  # its 17 grey levels, as stored
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    seen = digits.normalized("train")  # what the network sees
    assert seen.dtype == torch.float32 and abs(seen.mean().item()) < 1e-5
    assert seen.std().item() == pytest.approx(1.0, abs=1e-4)


def test_digits_are_scikit_learns_without_importing_it() -> None:
    """The bundled file read directly equals ``load_digits``, and a fresh process that
    loads digits never imports scikit-learn."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from gct_ablate.data._sources import _digits_arrays

    data, target = _digits_arrays()
    bunch = load_digits()
    assert np.array_equal(data, bunch.data) and np.array_equal(target, bunch.target)
    load_dataset("digits")  # the split is kept in the cache folder for later processes
    code = ("import sys; from gct_ablate.data import load_dataset; load_dataset('digits'); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_kept_split_equals_scikit_learns_and_a_damaged_one_is_remade(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The split read back from the cache is the one train_test_split makes; a cache file
    that is not a valid split is ignored and written anew."""
    from gct_ablate.data._splits import _sklearn_split, stratified_split

    monkeypatch.setenv("GCT_ABLATE_CACHE", str(tmp_path))
    labels = [i % 3 for i in range(30)]
    want = _sklearn_split(labels, 0.2)
    assert stratified_split(labels, 0.2) == want  # computed, then kept
    (kept,) = (tmp_path / "splits").iterdir()
    assert stratified_split(labels, 0.2) == want  # read back
    for damage in ("[1, 1, 2]", "[99]", "{", '"x"'):
        kept.write_text(damage)
        assert stratified_split(labels, 0.2) == want
    assert stratified_split(labels, 0.5) != want  # another fraction, another file
    assert len(list((tmp_path / "splits").iterdir())) == 2


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
    assert x.shape == (32, 1, 8, 8) and not torch.equal(x, digits.normalized("train")[:32])
    x, _ = next(digits.batches("train", 32, shuffle=False, augment=False))
    assert torch.equal(x, digits.normalized("train")[:32])


@pytest.mark.parametrize("name,title", [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")])
def test_missing_cifar_is_a_one_line_error(tmp_path: Path, name: str, title: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name, data_dir=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and title in message
    assert "--download" in message
    assert isinstance(info.value, ValueError)


def _write_images(folder: Path, classes: dict[str, int], size: int = 12) -> None:
    """JPEGs of ``size`` x ``size + 4`` pixels, ``count`` per class folder."""
    rng = np.random.default_rng(0)
    for label, count in classes.items():
        (folder / label).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.jpg", quality=90)


def test_imagefolder_train_val(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"cat": 3, "dog": 2})
    _write_images(tmp_path / "val", {"cat": 1, "dog": 2})
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8)
    assert data.classes == ("cat", "dog") and data.num_classes == 2
    assert data.train_x.shape == (5, 3, 8, 8) and data.val_x.shape == (3, 3, 8, 8)
    assert data.train_y.tolist() == [0, 0, 0, 1, 1] and data.val_y.tolist() == [0, 1, 1]
    assert data.train_x.dtype == torch.uint8 and data.augment == "crop-flip"


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
        load_dataset("emnist")


# ----------------------------------------------------------------------------- idx files
def _write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C,
            np.dtype(np.float32): 0x0D}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _write_mnist(folder: Path, n_train: int = 40, n_test: int = 20, side: int = 10,
                 gz: bool = True) -> dict[str, np.ndarray]:
    """The four idx files of an MNIST-format dataset (labels cycle through 0-9)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images, gz)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels, gz)
        arrays[stem] = images
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) % 200
    _write_idx(tmp_path / "a", array, gz)
    out = read_idx(tmp_path / "a")
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3, 5)
    assert np.array_equal(out, array)


@pytest.mark.parametrize("defect,message", [
    (lambda raw: b"\x01" + raw[1:], "bad magic"),
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "unknown type code 0x07"),
    (lambda raw: raw[:-1], "truncated"),
    (lambda raw: raw + b"\x00", "truncated or corrupt"),
    (lambda raw: raw[:6], "header cut short"),
    (lambda raw: gzip.compress(raw)[:-9], "corrupt gzip"),
    (lambda raw: None, "file not found"),
])
def test_read_idx_defects_are_one_line_errors_naming_the_path(tmp_path: Path, defect,
                                                               message: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    _write_idx(path, np.zeros((4, 3, 3), np.uint8), gz=False)
    broken = defect(path.read_bytes())
    if broken is None:
        path.unlink()
    else:
        path.write_bytes(broken)
    with pytest.raises(DataError) as info:
        read_idx(path, "apt-get install dataset-fashion-mnist")
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text
    assert text.endswith("; apt-get install dataset-fashion-mnist")


@pytest.mark.parametrize("layout", ["flat", "torchvision", "plain"])
def test_mnist_from_a_data_dir(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    arrays = _write_mnist(folder, gz=layout != "plain")
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert data.train_x.shape == (40, 1, 10, 10) and data.val_x.shape == (20, 1, 10, 10)
    assert data.train_y.tolist() == [i % 10 for i in range(40)]
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 10)
    assert (data.augment, data.pad_mode) == ("crop", "replicate")  # translation, no flip
    assert data.train_x.dtype == torch.uint8
    assert abs(data.normalized("train").mean().item()) < 1e-5
    # normalized by the training mean / std: the order of the pixels is kept
    raw = torch.tensor(arrays["t10k"], dtype=torch.float32)
    corr = np.corrcoef(raw.flatten(), data.normalized("val").flatten())[0, 1]
    assert corr == pytest.approx(1.0, abs=1e-6)


def _mapped_files(tensor: torch.Tensor) -> set[str]:
    """The files whose mapping in this process holds ``tensor``'s memory."""
    ptr = tensor.untyped_storage().data_ptr()
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= ptr < high and len(fields) >= 6:
                found.add(fields[5])
    return found


def test_idx_arrays_are_one_mapped_cache_file_per_node(tmp_path: Path, monkeypatch) -> None:
    """The first load writes the uint8 arrays to the cache folder; every process maps that
    file (one copy in the page cache) and a subset copies only its own images."""
    import subprocess
    import sys

    monkeypatch.setenv("GCT_ABLATE_CACHE", str(tmp_path / "cache"))
    _write_mnist(tmp_path / "data", n_train=50, n_test=30)
    data = load_dataset("mnist", data_dir=str(tmp_path / "data"))
    files = sorted((tmp_path / "cache" / "arrays").glob("mnist-*/train_x.npy"))
    assert len(files) == 1 and _mapped_files(data.train_x) == {str(files[0])}
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (50, 1, 10, 10)
    small = load_dataset("mnist", data_dir=str(tmp_path / "data"), train_size=20)
    assert small.train_x.shape[0] == 20 and not _mapped_files(small.train_x) & {str(files[0])}
    stamp = files[0].stat().st_mtime_ns
    code = ("import torch; from gct_ablate.data import load_dataset; "
            f"d = load_dataset('mnist', data_dir={str(tmp_path / 'data')!r}); "
            "print(d.train_x.float().sum().item())")
    env = {**os.environ, "GCT_ABLATE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert float(out.stdout.split()[-1]) == data.train_x.float().sum().item()
    assert sorted((tmp_path / "cache" / "arrays").glob("mnist-*/train_x.npy")) == files
    assert files[0].stat().st_mtime_ns == stamp  # read, not written again


def test_idx_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "--data-dir" in str(info.value)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    bad = tmp_path / "bad"
    _write_mnist(bad)
    _write_idx(bad / "t10k-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))
    with pytest.raises(DataError, match="uint8 labels below 10") as info:
        load_dataset("mnist", data_dir=str(bad))
    assert str(bad / "t10k-labels-idx1-ubyte.gz") in str(info.value)


# ----------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_is_found_where_debian_installs_it() -> None:
    data = load_dataset("fashion-mnist")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.val_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert torch.bincount(data.val_y).tolist() == [1000] * 10  # the official test set
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert (data.augment, data.pad) == ("crop", 2)


def test_fashion_mnist_trains_for_real() -> None:
    """A real run on a fixed subset of real images lands far above chance (10 %)."""
    cfg = TrialConfig(dataset="fashion-mnist", train_size=1000, val_size=500, epochs=1,
                      batch_size=16, lr=0.05, warmup_epochs=0, threads=1)
    m = train_eval(cfg)
    assert m["status"] == "ok" and m["epochs_done"] == 1
    assert m["val_top1"] >= 0.5, m  # 0.644 when measured


# ----------------------------------------------------------------------------- subsets
def test_train_and_val_size_are_stratified_and_fixed(digits: Dataset) -> None:
    torch.manual_seed(5)
    small = load_dataset("digits", train_size=200, val_size=50, seed=9)
    assert small.train_x.shape[0] == 200 and small.val_x.shape[0] == 50
    full_share = torch.bincount(digits.train_y, minlength=10) / digits.train_y.numel()
    share = torch.bincount(small.train_y, minlength=10) / 200
    assert torch.all((share - full_share).abs() <= 1 / 200 + 1e-6)  # proportional, +-1 image
    assert torch.bincount(small.val_y, minlength=10).tolist() == [5] * 10
    assert load_dataset("digits", train_size=200, val_size=50) is small  # cached per process
    rows = {tuple(r) for r in digits.train_x.flatten(1).tolist()}
    assert all(tuple(r) in rows for r in small.train_x.flatten(1).tolist())  # a subset


def test_subset_indices_do_not_depend_on_rng_state() -> None:
    labels = [i % 3 for i in range(30)]
    np.random.seed(1)
    torch.manual_seed(1)
    a = stratified_subset(labels, 10, "train_size", "x")
    np.random.seed(2)
    torch.manual_seed(2)
    assert stratified_subset(labels, 10, "train_size", "x") == a
    assert len(a) == 10 and sorted(a) == a and len(set(a)) == 10
    assert stratified_subset(labels, 30, "train_size", "x") is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(train_size=5000), "invalid train_size 5000: above the 1437 images of digits"),
    (dict(val_size=361), "invalid val_size 361: above the 360 images"),
    (dict(train_size=9), "below the 10 classes"),
    (dict(train_size=0), "invalid train_size 0; must be a positive integer"),
])
def test_subset_errors_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("digits", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("raw,expected", [("5000", 5000), (5000, 5000), (5000.0, 5000),
                                          ("all", "all"), ("ALL", "all"), (None, "all")])
def test_train_size_factor_levels(raw, expected) -> None:
    assert parse_level("train_size", raw) == expected


@pytest.mark.parametrize("raw", ["0", "-3", "1.5", "abc", "", True])
def test_bad_train_sizes_are_rejected(raw) -> None:
    with pytest.raises(FactorError, match="train_size"):
        parse_level("train_size", raw)
    with pytest.raises(SpecError, match="expected a positive integer or all"):
        TrialConfig(train_size=raw)


def test_sizes_reach_load_dataset() -> None:
    cfg = TrialConfig(train_size="300", val_size=100, image_size="16")
    assert cfg.factor_levels()["train_size"] == "300"
    options = cfg.data_options()
    assert (options["train_size"], options["val_size"], options["image_size"]) == (300, 100, 16)
    assert TrialConfig().data_options()["train_size"] is None
    _, data = build_trial(cfg)
    assert data.size("train") == 300 and data.size("val") == 100 and data.image_size == 16


def test_cli_size_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gct_ablate.cli import app

    runner = CliRunner()
    for args, message in (
        (["train", "--train-size", "0"], "invalid train_size '0'"),
        (["train", "--train-size", "99999", "--epochs", "1"],
         "invalid train_size 99999: above the 1437 images of digits"),
        (["run", "--set", "train_size=99999,epochs=1", "--workers", "1", "--out",
          str(tmp_path)], "invalid train_size 99999: above the 1437 images"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- CIFAR files
def _write_cifar(root: Path, name: str, per_batch: int = 4, n_test: int = 6
                 ) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """A small folder in CIFAR-10's or CIFAR-100's own format (python pickles of uint8 rows:
    1024 red, 1024 green, 1024 blue values, row-major), as torchvision's classes read it."""
    rng = np.random.default_rng(2)
    n_classes = 10 if name == "cifar10" else 100
    key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n: int, start: int) -> dict:
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(start + i) % n_classes for i in range(n)]
        entry = {"data": rows, key: labels, "filenames": [f"{start + i}.png" for i in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = [label // 5 for label in labels]
        return entry

    def dump(path: Path, obj: dict) -> None:
        path.write_bytes(pickle.dumps(obj, protocol=2))

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        train = [batch(per_batch, i * per_batch) for i in range(5)]
        for i, entry in enumerate(train, 1):
            dump(folder / f"data_batch_{i}", entry)
        test = batch(n_test, 0)
        dump(folder / "test_batch", test)
        dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        train = [batch(5 * per_batch, 0)]
        dump(folder / "train", train[0])
        test = batch(n_test, 0)
        dump(folder / "test", test)
        dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                               "coarse_label_names": [f"k{i}" for i in range(20)]})
    return (np.concatenate([b["data"] for b in train]), sum((b[key] for b in train), []),
            test["data"], test[key])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_folder_loads_through_torchvision(tmp_path: Path, name: str) -> None:
    from gct_ablate.data._sources import CIFAR_STATS

    train_rows, train_labels, test_rows, test_labels = _write_cifar(tmp_path, name)
    data = load_dataset(name, data_dir=str(tmp_path))
    assert data.train_x.shape == (20, 3, 32, 32) and data.val_x.shape == (6, 3, 32, 32)
    assert data.train_y.tolist() == train_labels and data.val_y.tolist() == test_labels
    assert data.num_classes == (10 if name == "cifar10" else 100)
    assert data.classes[1] == ("c1" if name == "cifar10" else "f1")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS[name])
    for split, x, rows in (("train", data.train_x, train_rows), ("val", data.val_x, test_rows)):
        assert torch.equal(x, torch.from_numpy(rows).view(-1, 3, 32, 32))  # as stored
        seen = (data.normalized(split) * std + mean) * 255
        torch.testing.assert_close(seen, x.float(), rtol=0, atol=1e-3)


def test_corrupt_cifar_is_a_one_line_error(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    text = str(info.value)
    assert "corrupt" in text and str(tmp_path / "cifar-10-batches-py") in text
    assert "\n" not in text
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load_dataset("cifar10", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- streaming
@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    _write_images(root / "train", {"ant": 10, "bee": 10}, size=40)
    _write_images(root / "val", {"ant": 4, "bee": 4}, size=40)
    return root


def test_budget_rule(jpeg_tree: Path) -> None:
    assert memory_estimate(10, 224) == 10 * 3 * 224 * 224 * 4
    assert not should_stream(3000, 224, 2.0) and should_stream(4000, 224, 2.0)
    at_64 = memory_estimate(28, 64) / 2**30  # 28 images in memory at the default 64 px
    kept = load_dataset("imagefolder", data_dir=str(jpeg_tree), memory_budget_gb=at_64)
    assert isinstance(kept, Dataset) and kept.image_size == 64
    assert isinstance(load_dataset("imagefolder", data_dir=str(jpeg_tree)), Dataset)
    streamed = load_dataset("imagefolder", data_dir=str(jpeg_tree), memory_budget_gb=at_64 * 0.99)
    assert isinstance(streamed, StreamDataset) and streamed.image_size == STREAM_IMAGE_SIZE
    forced = load_dataset("imagefolder", data_dir=str(jpeg_tree), stream=False,
                          memory_budget_gb=at_64 * 0.5)
    assert isinstance(forced, Dataset)
    small = load_dataset("imagefolder", data_dir=str(jpeg_tree), memory_budget_gb=at_64 * 0.99,
                         train_size=12)  # the budget counts the subset's images
    assert isinstance(small, Dataset) and small.size("train") == 12
    with pytest.raises(DataError, match="imagefolder"):
        load_dataset("digits", stream=True)


def test_streamed_batches(jpeg_tree: Path) -> None:
    from gct_ablate.data._stream import IMAGENET_STATS, eval_transform

    data = load_dataset("imagefolder", data_dir=str(jpeg_tree), stream=True, image_size=32,
                        loader_workers=0).to("cpu")
    assert (data.num_classes, data.in_channels, data.image_size) == (2, 3, 32)
    assert data.classes == ("ant", "bee") and data.size("train") == 20 and data.size("val") == 8
    assert data.num_batches("train", 8) == 3 and data.num_batches("train", 8, True) == 2
    val = list(data.batches("val", 3, shuffle=False, augment=False))
    assert [len(y) for _, y in val] == [3, 3, 2]
    assert torch.cat([y for _, y in val]).tolist() == [0] * 4 + [1] * 4
    x = val[0][0]
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    image = Image.open(data.val_set.samples[0][0]).convert("RGB")
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET_STATS)
    expected = (eval_transform(32)(image).float() / 255 - mean) / std
    assert torch.allclose(x[0], expected, atol=1e-5)
    again = next(data.batches("val", 3, shuffle=False, augment=False))[0]
    assert torch.equal(again, x)  # validation is deterministic
    epochs = [list(data.batches("train", 8, shuffle=True, generator=data.generator(s),
                                augment=True)) for s in (0, 0)]
    labels = [torch.cat([y for _, y in e]) for e in epochs]
    assert sorted(labels[0].tolist()) == [0] * 10 + [1] * 10
    assert torch.equal(labels[0], labels[1])  # same generator seed, same order
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])  # fresh crops and flips
    half = data.subset([0, 1, 10, 11], None)
    assert half.size("train") == 4 and half.labels("train") == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="split"):
        next(data.batches("test", 8, shuffle=False, augment=False))


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_training_end_to_end(jpeg_tree: Path, workers: int) -> None:
    from gct_ablate.analysis.gates import gate_stats
    from gct_ablate.analysis.prune import n_to_remove, prune_curve

    cfg = TrialConfig(dataset="imagefolder", data_dir=str(jpeg_tree), stream=True,
                      image_size="32", loader_workers=workers, epochs=1, batch_size=8,
                      threads=1)

    def on_end(model, data, device):
        assert isinstance(data, StreamDataset) and data.workers == workers
        return {"gates": gate_stats(model, data, device),
                "curve": prune_curve(model, data, device, fractions=(0.0, 0.5))}

    seen = []
    m = train_eval(cfg, lambda e, metrics: seen.append(metrics), on_end=on_end)
    assert m["status"] == "ok" and m["epochs_done"] == 1 and len(seen) == 1
    assert math.isfinite(m["train_loss"]) and 0.0 <= m["val_top1"] <= 1.0
    assert len(m["gates"]) == m["n_attention_modules"] > 0
    assert [p.n_removed for p in m["curve"]] == [0, n_to_remove(0.5, m["n_attention_modules"])]
    assert m["curve"][0].val_top1 == m["val_top1"]
    if workers:  # the same seed, the same numbers, with worker processes too
        assert train_eval(cfg)["train_loss"] == m["train_loss"]


def test_train_size_as_a_study_axis() -> None:
    """`--vary train_size` (a learning curve): its default levels fit every dataset."""
    from gct_ablate.spec import StudySpec

    spec = StudySpec(vary=("train_size",), fixed={"val_size": "100"})
    sizes = []
    for cell in spec.cells():
        data = load_dataset("digits", **spec.config(cell, seed=1).data_options())
        sizes.append((data.size("train"), data.size("val")))
    assert sizes == [(500, 100), (1000, 100), (1437, 100)]
