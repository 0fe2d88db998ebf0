"""Datasets: definitions and integrity. CIFAR-10, CIFAR-100, SVHN, MNIST and Fashion-MNIST through torchvision's
dataset classes; ``digits``, real handwritten digits that ship inside scikit-learn, for runs without a download.

The official files are checked against torchvision's MD5 sums before they are read (``verify=False``,
``--no-verify_data``, for your own data in the same format), and CIFAR's pickles are read by a restricted unpickler,
so a tampered file is an error that names it, never code that runs.

``--data_path`` may hold the torchvision layout (``<data_path>/cifar-10-batches-py``) or the FGR reference layout
(``<data_path>/cifar10/cifar-10-batches-py``); missing data is downloaded into ``<data_path>`` when the network
allows. Transforms and loaders are in ``utils.data``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from .errors import UserError


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles what the CIFAR files hold (dicts, lists, strings, numbers, numpy arrays) and nothing else: a
    tampered file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file")


def read_cifar_pickle(path: str) -> dict:
    """One CIFAR file (a Python 2 pickle), read with :class:`_SafeUnpickler`. Raises UserError naming the file when
    it holds anything but data."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise UserError(f"{path} is not a CIFAR data file ({type(e).__name__}: {e}); nothing in it was run. Replace "
                        f"it with the official file") from None


class _SafeCIFAR:
    """torchvision's CIFAR class with its files read by :func:`read_cifar_pickle` instead of ``pickle.load`` (the
    rest, ``__getitem__`` and the transforms, is torchvision's). Presence is checked here; MD5 sums in
    :func:`load_dataset`."""

    def __init__(self, root, train: bool = True, transform=None, target_transform=None, download: bool = False):
        datasets.VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        data, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            entry = read_cifar_pickle(os.path.join(self.root, self.base_folder, name))
            data.append(entry["data"])
            self.targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self._load_meta()

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f))
                   for f, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        self.classes = read_cifar_pickle(path)[self.meta["key"]] if os.path.isfile(path) else []  # cosmetic
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10(_SafeCIFAR, datasets.CIFAR10):
    pass


class CIFAR100(_SafeCIFAR, datasets.CIFAR100):
    pass


class SVHN(datasets.SVHN):
    """torchvision's SVHN (scipy's .mat reader runs no code); MD5 sums are checked in :func:`load_dataset`."""

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


def official_md5(name: str) -> dict:
    """file name -> MD5 of the official files of dataset ``name`` (torchvision's table; empty for ``digits`` and for
    MNIST / Fashion-MNIST, whose torchvision table covers the downloaded archives, which torchvision checks)."""
    cls = DATASETS[name].cls
    if cls is SVHN:
        return {f: md5 for _, f, md5 in datasets.SVHN.split_list.values() if f.endswith("32x32.mat")}
    if cls in (CIFAR10, CIFAR100):
        return {**dict(cls.train_list + cls.test_list), cls.meta["filename"]: cls.meta["md5"]}
    return {}


class Digits(torch.utils.data.Dataset):
    """scikit-learn's handwritten digits (UCI optical recognition of handwritten digits: 1,797 grey 8 x 8 images of
    10 classes), upsampled bilinearly to 32 x 32 and repeated over 3 channels, so every CIFAR model and transform
    applies. A fixed split (seed 0): 1,497 training and 300 test images. Nothing is downloaded; ``root`` is unused.
    Items are ``(PIL RGB image after transform, label)``, as torchvision's CIFAR classes."""

    n_test = 300

    def __init__(self, root=None, train: bool = True, transform=None, download: bool = False):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # N x 1 x 8 x 8 in [0, 1]
        images = F.interpolate(images, size=32, mode="bilinear", align_corners=False).clamp(0, 1)
        images = images.mul(255).round().to(torch.uint8).squeeze(1)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        keep = order[self.n_test:] if train else order[:self.n_test]
        self.data = images[keep].numpy()
        self.targets = [int(digits.target[i]) for i in keep]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i]).convert("RGB")
        return (self.transform(img) if self.transform is not None else img), self.targets[i]


class _Pad32:
    """Mixin for torchvision's MNIST classes: each 28 x 28 image padded by 2 px of black to 32 x 32, so every model of
    the registry (built for 32 x 32) and every transform applies, as is usual for MNIST with CIFAR architectures."""

    def __getitem__(self, index):
        img = ImageOps.expand(Image.fromarray(self.data[index].numpy(), mode="L"), border=2, fill=0)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


class MNIST(_Pad32, datasets.MNIST):
    pass


class FashionMNIST(_Pad32, datasets.FashionMNIST):
    pass


class DatasetInfo(NamedTuple):
    cls: type
    num_classes: int
    folder: str  # sub-folder of the root that holds the files ("" for SVHN)
    files: list
    mean: tuple
    std: tuple
    channels: int = 3


_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"]

DATASETS = {
    "cifar10": DatasetInfo(CIFAR10, 10, "cifar-10-batches-py",
                           [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(CIFAR100, 100, "cifar-100-python", ["train", "test"],
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": DatasetInfo(SVHN, 10, "", ["train_32x32.mat", "test_32x32.mat"],
                        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "digits": DatasetInfo(Digits, 10, "", [], (0.3053,) * 3, (0.3237,) * 3),
    "mnist": DatasetInfo(MNIST, 10, "MNIST/raw", _MNIST_FILES, (0.1307,), (0.3081,), channels=1),
    "fashionmnist": DatasetInfo(FashionMNIST, 10, "FashionMNIST/raw", _MNIST_FILES, (0.2860,), (0.3530,), channels=1),
}
DATASET_HELP = f"{', '.join(DATASETS)} (digits: built in, no download)"


def num_classes(name: str) -> int:
    return DATASETS[_check_name(name)].num_classes


def num_channels(name: str) -> int:
    """Input channels of dataset ``name`` (1 for MNIST and Fashion-MNIST, else 3)."""
    return DATASETS[_check_name(name)].channels


def model_options_for(name: str, takes=(), **values) -> dict:
    """The options a registry model is built with for dataset ``name``: one input channel for the grey datasets, and
    each of ``values`` (GSeM's alpha and beta) that the model takes (``takes``: ``models.model_options(model)``)."""
    channels = num_channels(name)
    return {**{k: v for k, v in values.items() if k in takes}, **({"in_channels": channels} if channels != 3 else {})}


def dataset_stats(name: str):
    """(mean, std) per channel, for models built with ``normalize=``."""
    info = DATASETS[_check_name(name)]
    return info.mean, info.std


def _check_name(name: str) -> str:
    key = name.lower()
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def _find_root(name: str, data_path: str):
    """The folder torchvision should read from, or None when the files are not there."""
    info = DATASETS[name]
    for root in (data_path, os.path.join(data_path, name)):
        if all(os.path.isfile(os.path.join(root, info.folder, f)) for f in info.files):
            return root
    return None


def _missing_message(name: str, data_path: str, reason: str) -> str:
    info = DATASETS[name]
    where = os.path.join(data_path, info.folder)
    alt = os.path.join(data_path, name, info.folder)
    return (f"{name} not found in {data_path!r} and could not be downloaded ({reason}). "
            f"Put the files {', '.join(info.files)} in {where} (or {alt}), e.g. by extracting the official archive "
            f"there, or run once with network access to download them.")


def verify_files(name: str, root: str, train: bool) -> None:
    """Check the MD5 sums of the official files of one split (and CIFAR's meta file). Raises UserError naming the
    first file that differs."""
    info, md5 = DATASETS[name], official_md5(name)
    if not md5:
        return
    if info.cls is SVHN:
        files = ["train_32x32.mat" if train else "test_32x32.mat"]
    else:
        cls = info.cls
        files = [f for f, _ in (cls.train_list if train else cls.test_list)] + [cls.meta["filename"]]
    for f in files:
        path = os.path.join(root, info.folder, f)
        if os.path.isfile(path) and not check_integrity(path, md5[f]):
            raise UserError(f"{path} fails its MD5 check: it is not the official {name} file (tampered, re-saved or "
                            f"your own data). Replace it with the official file, or pass --no-verify_data to use "
                            f"your own data in the same format")


def load_dataset(name: str, data_path: str, train: bool, transform=None, download: bool = True,
                 verify: bool = True):
    """Load one split through torchvision, after checking the official files' MD5 sums (``verify``). Raises
    UserError naming the expected files when it cannot."""
    name = _check_name(name)
    info = DATASETS[name]
    root = _find_root(name, data_path)
    if root is None:
        if not download:
            raise UserError(_missing_message(name, data_path, "download disabled"))
        created = os.path.abspath(data_path)  # the topmost folder this call creates: removed again if left empty
        while not os.path.isdir(os.path.dirname(created)):
            created = os.path.dirname(created)
        existed = os.path.isdir(data_path)
        try:
            os.makedirs(data_path, exist_ok=True)
            _construct(info.cls, data_path, train, None, download=True)
        except Exception as e:  # no network, HTTP error, bad archive, unwritable folder
            if not existed:  # leave no empty folders behind
                for folder, _, _ in sorted(os.walk(created), key=lambda t: -len(t[0])):
                    with contextlib.suppress(OSError):
                        os.rmdir(folder)  # only empty folders go
            raise UserError(_missing_message(name, data_path, f"{type(e).__name__}: {e}")) from None
        root = data_path
    if verify:
        verify_files(name, root, train)
    try:
        dataset = _construct(info.cls, root, train, transform, download=False)
    except UserError:
        raise
    except Exception as e:  # truncated pickle, wrong array shape, unreadable .mat
        raise UserError(f"{name} files in {os.path.join(root, info.folder)} are corrupt or not in the official format "
                        f"({type(e).__name__}: {e}). Replace {', '.join(info.files)} with the official files."
                        ) from None
    labels = torch.as_tensor(getattr(dataset, "targets", getattr(dataset, "labels", [])))
    if labels.numel() and (labels.min() < 0 or labels.max() >= info.num_classes):
        bad = labels[(labels < 0) | (labels >= info.num_classes)]
        raise UserError(f"the {'training' if train else 'test'} labels of {name} in {os.path.join(root, info.folder)} "
                        f"run outside 0..{info.num_classes - 1} ({bad.numel()} labels, e.g. {int(bad[0])}): the files "
                        f"are not {name}'s; every such point would count as a miss")
    return dataset


def _construct(cls, root, train, transform, download):
    if cls is SVHN:
        return cls(root, split="train" if train else "test", transform=transform, download=download)
    return cls(root, train=train, transform=transform, download=download)


def fingerprint(dataset) -> str:
    """A short SHA-256 of the images and labels of ``dataset`` as stored (before any transform): results are keyed by
    it, so an evaluation on other files never replaces rows computed on these."""
    data = getattr(dataset, "data", None)
    labels = getattr(dataset, "targets", getattr(dataset, "labels", None))
    h = hashlib.sha256()
    for part in (data, labels):
        if part is not None:
            arr = np.asarray(part.numpy() if torch.is_tensor(part) else part)
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]
