"""Each dataset read from its own files into a :class:`Dataset` (or a :class:`StreamDataset`).

Images are kept as stored (uint8) with the per-channel mean and standard deviation that
normalize them per batch; idx and CIFAR arrays are memory-mapped from the cache
(:mod:`gct_ablate.data._arrays`).
"""

from __future__ import annotations

import copy
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gct_ablate.data._arrays import cached_arrays, channel_stats
from gct_ablate.data._idx import read_idx
from gct_ablate.data._memory import Dataset
from gct_ablate.data._splits import stratified_split, stratified_subset
from gct_ablate.data._stream import (
    STREAM_IMAGE_SIZE,
    StreamDataset,
    select_samples,
    should_stream,
)
from gct_ablate.errors import DataError

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
# name: (title, torchvision's folder, classes, how to get the files)
IDX_DATASETS = {
    "mnist": ("MNIST", "MNIST", tuple(str(c) for c in range(10)),
              "pass --data-dir DIR holding its four idx files, or --download"),
    "fashion-mnist": ("Fashion-MNIST", "FashionMNIST", FASHION_CLASSES,
                      "install it with 'apt-get install dataset-fashion-mnist', pass --data-dir "
                      "DIR holding its four idx files, or --download"),
}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGEFOLDER_SIZE = 64  # in-memory side when image_size is not given


def _digits_arrays() -> tuple[Any, Any]:
    """scikit-learn's bundled digits (1797 images of 8x8, 64 grey levels in 0..16, and
    labels), read from the package's own ``digits.csv.gz`` without importing scikit-learn
    (its import costs every worker process more than a second); ``load_digits`` when that
    file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float32)
            if table.shape == (1797, 65):
                return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target


def digits(val_fraction: float) -> Dataset:
    data, target = _digits_arrays()
    x = torch.tensor(data, dtype=torch.uint8).view(-1, 1, 8, 8)  # grey levels 0..16
    y = torch.tensor(target, dtype=torch.int64)
    train, val = stratified_split(y.tolist(), val_fraction)
    tx, vx = x[train], x[val]
    mean, std = channel_stats(tx.numpy())
    return Dataset("digits", tx, y[train], vx, y[val], 10, 1, 8, "crop", 1, "replicate",
                   tuple(str(c) for c in range(10)), mean, std)


# ----------------------------------------------------------------------------- idx files
def _idx_folder(name: str, root: Path, download: bool) -> Path:
    """The folder holding the idx files: ``root`` or torchvision's ``root/<Name>/raw``."""
    title, folder, _, hint = IDX_DATASETS[name]
    candidates = (root, root / folder / "raw")
    for path in candidates:
        if any((path / f"{IDX_FILES['train'][0]}{ext}").is_file() for ext in (".gz", "")):
            return path
    if download:
        from torchvision import datasets

        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        try:
            cls(str(root), train=True, download=True)
        except (OSError, RuntimeError) as err:
            raise DataError(f"{title}: cannot download into {root} ({err})") from None
        return candidates[1]
    raise DataError(f"{title} not found in {root}; {hint}")


def _idx_file(folder: Path, stem: str) -> Path:
    """``stem.gz``, else the plain ``stem`` (the .gz name when neither is there)."""
    gz = folder / f"{stem}.gz"
    return gz if gz.is_file() or not (folder / stem).is_file() else folder / stem


def idx_dataset(name: str, root: Path, download: bool) -> Dataset:
    """MNIST or Fashion-MNIST from its four idx files; the official test set is validation."""
    title, _, classes, hint = IDX_DATASETS[name]
    folder = _idx_folder(name, root, download)
    paths = {split: [_idx_file(folder, stem) for stem in IDX_FILES[split]]
             for split in ("train", "val")}

    def build() -> dict[str, np.ndarray]:
        arrays = {}
        for split, (image_path, label_path) in paths.items():
            images, labels = read_idx(image_path, hint), read_idx(label_path, hint)
            if images.ndim != 3 or images.dtype != np.uint8 or 0 in images.shape:
                raise DataError(f"{image_path}: {images.dtype} array of shape {images.shape}, "
                                f"not uint8 images (N, H, W), N > 0; {hint}")
            if labels.shape != images.shape[:1] or labels.dtype != np.uint8 or \
                    int(labels.max(initial=0)) >= len(classes):
                raise DataError(f"{label_path}: not {images.shape[0]} uint8 labels below "
                                f"{len(classes)}; {hint}")
            arrays[f"{split}_x"], arrays[f"{split}_y"] = images[:, None], labels
        if arrays["train_x"].shape[2:] != arrays["val_x"].shape[2:]:
            raise DataError(f"{title} in {folder}: train and test images differ in size")
        arrays["mean"], arrays["std"] = (np.array(v) for v in channel_stats(arrays["train_x"]))
        return arrays

    for path in (p for pair in paths.values() for p in pair):
        if not path.is_file():
            raise DataError(f"{path}: file not found; {hint}")
    a = cached_arrays(name, [p for pair in paths.values() for p in pair], build)
    tx, vx = torch.from_numpy(a["train_x"]), torch.from_numpy(a["val_x"])
    size = tx.shape[-1]
    return Dataset(name, tx, torch.from_numpy(a["train_y"]).long(), vx,
                   torch.from_numpy(a["val_y"]).long(), len(classes), 1, size, "crop",
                   max(1, size // 14), "replicate", classes, tuple(a["mean"].tolist()),
                   tuple(a["std"].tolist()))


# ----------------------------------------------------------------------------- CIFAR
def _cifar_class(name: str) -> Any:
    """torchvision's CIFAR10/100 reading the same files, checked for presence and by
    unpickling instead of by MD5, so CIFAR-format folders of one's own load too (a
    download still checks the archive's MD5)."""
    from torchvision import datasets

    base = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    attrs = {"train_list": [[f, None] for f, _ in base.train_list],
             "test_list": [[f, None] for f, _ in base.test_list],
             "meta": {**base.meta, "md5": None}}
    return type(base.__name__, (base,), attrs)


def cifar(name: str, root: Path, download: bool) -> Dataset:
    cls = _cifar_class(name)
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = root / cls.base_folder

    def read() -> tuple[Any, Any]:
        try:
            return (cls(str(root), train=True, download=download),
                    cls(str(root), train=False, download=download))
        except RuntimeError:
            raise DataError(f"{title} not found in {root} (no complete {cls.base_folder}/); "
                            "pass --download or --data-dir DIR") from None
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            first = str(err).splitlines()[0] if str(err) else "unreadable"
            raise DataError(f"{title} files in {folder} are corrupt ({type(err).__name__}: "
                            f"{first})") from None
        except OSError as err:
            raise DataError(f"{title}: cannot read or download into {root} ({err})") from None

    def build() -> dict[str, np.ndarray]:
        train, val = read()
        return {"train_x": train.data.transpose(0, 3, 1, 2),
                "val_x": val.data.transpose(0, 3, 1, 2),
                "train_y": np.asarray(train.targets, dtype=np.int64),
                "val_y": np.asarray(val.targets, dtype=np.int64),
                "classes": np.array(train.classes)}

    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    if not all((folder / f).is_file() for f in files):
        read()  # downloads, or says what is missing
    a = cached_arrays(name, [folder / f for f in files], build)
    mean, std = (tuple(255 * v for v in stats) for stats in CIFAR_STATS[name])
    classes = tuple(str(c) for c in a["classes"])
    return Dataset(name, torch.from_numpy(a["train_x"]), torch.from_numpy(a["train_y"]),
                   torch.from_numpy(a["val_x"]), torch.from_numpy(a["val_y"]),
                   len(classes), 3, 32, "crop-flip", 4, "reflect", classes, mean, std)


# ----------------------------------------------------------------------------- fake
def _stack(ds: Any) -> tuple[Tensor, Tensor]:
    """(images, labels); images uint8, as PILToTensor gives them."""
    pairs = [ds[i] for i in range(len(ds))]
    return (torch.stack([p[0] for p in pairs]),
            torch.tensor([int(p[1]) for p in pairs], dtype=torch.int64))


def fake(seed: int) -> Dataset:
    from torchvision import datasets, transforms

    offset = seed * 1_000_003
    kw = dict(image_size=(3, 32, 32), num_classes=10, transform=transforms.PILToTensor())
    tx, ty = _stack(datasets.FakeData(size=512, random_offset=offset, **kw))
    vx, vy = _stack(datasets.FakeData(size=128, random_offset=offset + 512, **kw))
    return Dataset("fake", tx, ty, vx, vy, 10, 3, 32, "crop-flip", 4, "reflect",
                   tuple(str(c) for c in range(10)), (127.5,) * 3, (127.5,) * 3)


# ----------------------------------------------------------------------------- image folders
def _scan(path: Path) -> Any:
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(path))
    except (FileNotFoundError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else "no images"
        raise DataError(f"no usable image folder at {path}: {reason}") from None


def _folders(root: Path, val_fraction: float) -> tuple[Any, Any]:
    """Train and validation ImageFolders: train/ and val/, else one folder split."""
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; pass --data-dir DIR with train/ and "
                        "val/ class folders (or one folder of class folders)")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = _scan(root / "train"), _scan(root / "val")
        if train.classes != val.classes:
            raise DataError(f"{root}: train/ and val/ have different class folders")
        return train, val
    full = _scan(root)
    train_idx, val_idx = stratified_split(full.targets, val_fraction)
    return select_samples(full, train_idx), select_samples(full, val_idx)


def imagefolder(root: Path, val_fraction: float, image_size: int | None, train_size: int | None,
                val_size: int | None, stream: bool | None, budget_gb: float, workers: int
                ) -> Dataset | StreamDataset:
    """Class folders in memory at ``image_size`` (default 64), or streamed (default 224)
    when ``stream`` is True, or None and the in-memory tensors would exceed ``budget_gb``."""
    train, val = _folders(root, val_fraction)
    train = select_samples(train, stratified_subset(train.targets, train_size, "train_size",
                                                    f"{root}'s training split"))
    val = select_samples(val, stratified_subset(val.targets, val_size, "val_size",
                                                f"{root}'s validation split"))
    classes = tuple(train.classes)
    if len(classes) < 2:  # one class trains to a meaningless 100 %
        raise DataError(f"{root}: {len(classes)} class folder(s) ({', '.join(classes)}); "
                        "classification needs at least two")
    n = len(train.samples) + len(val.samples)
    if stream is None:
        stream = should_stream(n, image_size or IMAGEFOLDER_SIZE, budget_gb)
    if stream:
        return StreamDataset("imagefolder", train, val, len(classes),
                             image_size or STREAM_IMAGE_SIZE, classes, workers)
    size = image_size or IMAGEFOLDER_SIZE
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                             transforms.PILToTensor()])
    try:
        (tx, ty), (vx, vy) = (_stack(_with_transform(f, tf)) for f in (train, val))
    except OSError as err:  # PIL's UnidentifiedImageError names the file
        raise DataError(f"{root}: cannot read an image ({err})") from None
    mean, std = channel_stats(tx.numpy())
    return Dataset("imagefolder", tx, ty, vx, vy, len(classes), 3, size, "crop-flip",
                   max(1, size // 8), "reflect", classes, mean, std)


def _with_transform(folder: Any, transform: Any) -> Any:
    view = copy.copy(folder)
    view.transform = transform
    return view
