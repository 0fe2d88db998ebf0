"""Datasets (CIFAR-10, CIFAR-100, SVHN through torchvision's dataset classes; ``digits``, real handwritten digits that
ship inside scikit-learn, for runs without a download), with clear errors.

The official files are checked against torchvision's MD5 sums before they are read (``verify=False``,
``--no-verify_data``, for your own data in the same format), and CIFAR's pickles are read by a restricted unpickler,
so a tampered file is an error that names it, never code that runs.

``--data_path`` may hold the torchvision layout (``<data_path>/cifar-10-batches-py``) or the FGR reference layout
(``<data_path>/cifar10/cifar-10-batches-py``); missing data is downloaded into ``<data_path>`` when the network
allows.
"""
from __future__ import annotations

import math
import os
import pickle
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset
from PIL import Image, ImageOps
from torchvision import datasets, transforms
from torchvision.datasets.utils import check_integrity
from tqdm.auto import tqdm

from . import distributed as dist
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


def num_classes(name: str) -> int:
    return DATASETS[_check_name(name)].num_classes


def num_channels(name: str) -> int:
    """Input channels of dataset ``name`` (1 for MNIST and Fashion-MNIST, else 3)."""
    return DATASETS[_check_name(name)].channels


def dataset_stats(name: str):
    """(mean, std) per channel, for models built with ``normalize=``."""
    info = DATASETS[_check_name(name)]
    return info.mean, info.std


def _check_name(name: str) -> str:
    key = name.lower()
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def fgr_transforms(augment: str):
    """(train, test) transforms for the FGR scripts.

    'reference' (default, what produced the published FGR numbers): train Resize((36, 36)) -> RandomCrop(32) ->
    flip; test Resize((36, 36)) -> CenterCrop(32). 'standard': RandomCrop(32, padding=4) + flip; raw test images.
    'none': raw images for both.
    """
    to_tensor = transforms.ToTensor()
    if augment == "reference":
        train = transforms.Compose([transforms.Resize((36, 36)), transforms.RandomCrop(32),
                                    transforms.RandomHorizontalFlip(), to_tensor])
        test = transforms.Compose([transforms.Resize((36, 36)), transforms.CenterCrop(32), to_tensor])
    elif augment == "standard":
        train = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), to_tensor])
        test = to_tensor
    elif augment == "none":
        train = test = to_tensor
    else:
        raise UserError(f"unknown augmentation {augment!r}; use reference, standard or none")
    return train, test


class DeviceAugment(NamedTuple):
    """Random augmentation done on the device, per example, in batches (:class:`DeviceLoader`): a ``crop`` x ``crop``
    window at a uniform offset of the image padded by ``pad`` pixels of value ``fill``, a horizontal flip with
    probability 1/2 (``flip``), and a Cutout hole of ``cutout`` px (0 = none) as :class:`Cutout`."""
    crop: int = 32
    pad: int = 0
    fill: int = 0
    flip: bool = True
    cutout: int = 0


def fgr_device_transforms(augment: str):
    """:func:`fgr_transforms` split for :class:`DeviceLoader`: ``(static train, static test, DeviceAugment)``. The
    static parts are deterministic and run once, on CPU, through torchvision (uint8 out); the random crop and flip
    run on the device. Same distribution as :func:`fgr_transforms`."""
    to_uint8 = transforms.PILToTensor()
    if augment == "reference":  # the Resize is deterministic: done once; RandomCrop(32) of 36 x 36 on the device
        return (transforms.Compose([transforms.Resize((36, 36)), to_uint8]),
                transforms.Compose([transforms.Resize((36, 36)), transforms.CenterCrop(32), to_uint8]),
                DeviceAugment(crop=32, pad=0, flip=True))
    if augment == "standard":
        return to_uint8, to_uint8, DeviceAugment(crop=32, pad=4, fill=0, flip=True)
    if augment == "none":
        return to_uint8, to_uint8, DeviceAugment(crop=32, pad=0, flip=False)
    raise UserError(f"unknown augmentation {augment!r}; use reference, standard or none")


class Cutout:
    """Zero one ``size`` x ``size`` square with a uniformly drawn centre, clipped at the borders, on a C x H x W
    tensor (DeVries & Taylor 2017; the GSeM reference applies one 16 px hole after ToTensor)."""

    def __init__(self, size: int = 16):
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y1, y2 = max(cy - self.size // 2, 0), min(cy + self.size // 2, h)
        x1, x2 = max(cx - self.size // 2, 0), min(cx + self.size // 2, w)
        img = img.clone()
        img[..., y1:y2, x1:x2] = 0
        return img

    def __repr__(self):
        return f"Cutout(size={self.size})"


def gsem_transforms(channels: int = 3):
    """(train, test) transforms of the GSeM reference, the same for CIFAR-10, CIFAR-100 and SVHN (X-L-Liu/GSeM):
    RandomCrop(32, padding=4, fill=128) -> flip -> AutoAugment (CIFAR-10 policy, fill 128) -> ToTensor -> Cutout(16);
    test: ToTensor only. torchvision's AutoAugment stands in for the reference's DeepVoltaire copy of the policy.
    ``channels`` = 1 for the grey datasets (the fill has one value per channel)."""
    train = transforms.Compose([
        transforms.RandomCrop(32, padding=4, fill=128),
        transforms.RandomHorizontalFlip(),
        transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10, fill=[128] * channels),
        transforms.ToTensor(),
        Cutout(16),
    ])
    return train, transforms.ToTensor()


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
        try:
            os.makedirs(data_path, exist_ok=True)
            _construct(info.cls, data_path, train, None, download=True)
        except Exception as e:  # no network, HTTP error, bad archive, unwritable folder
            raise UserError(_missing_message(name, data_path, f"{type(e).__name__}: {e}")) from None
        root = data_path
    if verify:
        verify_files(name, root, train)
    try:
        return _construct(info.cls, root, train, transform, download=False)
    except UserError:
        raise
    except Exception as e:  # truncated pickle, wrong array shape, unreadable .mat
        raise UserError(f"{name} files in {os.path.join(root, info.folder)} are corrupt or not in the official format "
                        f"({type(e).__name__}: {e}). Replace {', '.join(info.files)} with the official files."
                        ) from None


def _construct(cls, root, train, transform, download):
    if cls is SVHN:
        return cls(root, split="train" if train else "test", transform=transform, download=download)
    return cls(root, train=train, transform=transform, download=download)


def _split_sets(name, data_path, train_transform, test_transform, subset, seed, val_split, verify):
    train_set = load_dataset(name, data_path, True, train_transform, verify=verify)
    if val_split:
        if val_split >= len(train_set):
            raise UserError(f"--val_split {val_split} must be smaller than the training set ({len(train_set)} images)")
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
        test_set = Subset(load_dataset(name, data_path, True, test_transform, verify=verify), sorted(order[:val_split]))
        train_set = Subset(train_set, sorted(order[val_split:]))
    else:
        test_set = load_dataset(name, data_path, False, test_transform, verify=verify)
    if subset and subset > min(len(train_set), len(test_set)):
        print(f"note: --subset {subset} is more than the {len(train_set)} training / {len(test_set)} test images; "
              f"all of a smaller split are used", flush=True)
    if subset:
        train_set = Subset(train_set, range(min(subset, len(train_set))))
        test_set = Subset(test_set, range(min(subset, len(test_set))))
    return train_set, test_set


def make_loaders(name: str, data_path: str, batch_size: int, train_transform, test_transform, *, subset: int = 0,
                 workers: int = 4, seed: int = 0, test_batch_size: int | None = None, pin_memory: bool = False,
                 val_split: int = 0, device_augment: DeviceAugment | None = None, device=None, bar: bool = True,
                 verify: bool = True):
    """Train and test loaders. ``subset=N`` keeps the first N images of each split (smoke runs, CI).

    ``val_split=N`` holds out N training images (a fixed random choice given ``seed``, test transform) and returns
    them in place of the test set, for model selection that never sees the test set.
    With ``device_augment`` (and ``device``) the transforms must be the static uint8 ones of
    :func:`fgr_device_transforms` and both loaders are :class:`DeviceLoader` objects; otherwise torchvision
    DataLoaders with ``workers`` processes.
    ``verify`` checks the official files' MD5 sums (:func:`load_dataset`).
    The training order comes from a dedicated ``torch.Generator`` (returned, so a checkpoint can save and restore it
    and a resumed run sees the same batches)."""
    train_set, test_set = _split_sets(name, data_path, train_transform, test_transform, subset, seed, val_split, verify)
    gen = torch.Generator().manual_seed(seed)
    world = dist.world_size()
    if world > 1 and batch_size % world:
        raise UserError(f"--batch_size {batch_size} must be divisible by the number of processes ({world})")
    if world > 1:  # each rank evaluates a contiguous shard of the test set
        test_set = Subset(test_set, dist.shard(len(test_set)))
    if device_augment is not None:
        return (DeviceLoader(train_set, batch_size, device, device_augment, generator=gen, bar=bar),
                DeviceLoader(test_set, test_batch_size or batch_size, device, bar=bar), gen)
    workers = min(workers, os.cpu_count() or 1)  # more workers than cores only adds overhead
    common = dict(num_workers=workers, pin_memory=pin_memory)
    # Training workers are started anew every epoch, seeded from ``gen`` (saved with the resume state): persistent
    # workers would carry their random state across epochs, and a resumed run could not reproduce it.
    if world > 1:  # global batch unchanged: each rank takes batch_size / world
        sampler = DistributedSampler(train_set, shuffle=True, seed=seed, drop_last=False)
        train_loader = DataLoader(train_set, batch_size=batch_size // world, sampler=sampler, generator=gen, **common)
    else:
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=gen, **common)
    test_loader = DataLoader(test_set, batch_size=test_batch_size or batch_size, shuffle=False,
                             persistent_workers=workers > 0, **common)
    return train_loader, test_loader, gen


class DeviceLoader:
    """A dataset held on ``device`` as uint8 (N x C x H x W, the static transform applied once), served in batches
    of float images in [0, 1] with labels, augmented on the device per example (:class:`DeviceAugment`): one gather
    for crop + flip of the whole batch, one mask for Cutout. No worker processes, no PIL, no host-to-device copy of
    images after the first. Without ``augment`` it serves the images in order (evaluation).

    Every random draw (order, offsets, flips, Cutout centres) comes from the CPU ``generator``, so a run resumes
    exactly from its saved state. Under torchrun every rank draws the whole global batch and keeps its contiguous
    share, so the processes together train on exactly the single-process batch."""

    def __init__(self, dataset, batch_size: int, device, augment: DeviceAugment | None = None, *,
                 generator: torch.Generator | None = None, bar: bool = True):
        pairs = [dataset[i] for i in tqdm(range(len(dataset)), desc="data to device", leave=False,
                                          disable=not (bar and dist.is_main()))]
        images = torch.stack([x for x, _ in pairs]) if pairs else torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
        if images.dtype != torch.uint8:
            raise ValueError("DeviceLoader needs a static transform that returns uint8 tensors (PILToTensor)")
        if augment is not None and augment.pad:
            images = F.pad(images, [augment.pad] * 4, value=augment.fill)
        if augment is not None and augment.crop > min(images.shape[-2:]):
            raise ValueError(f"crop {augment.crop} larger than the images {tuple(images.shape[-2:])}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = torch.as_tensor([int(y) for _, y in pairs], dtype=torch.long).to(self.device)
        self.batch_size, self.augment = batch_size, augment
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def draw(self, n: int) -> torch.Tensor:
        """n x 5 random parameters (row offset, column offset, flip, Cutout centre row, column), on the CPU."""
        a, (h, w) = self.augment, self.images.shape[-2:]
        highs = (h - a.crop + 1, w - a.crop + 1, 2 if a.flip else 1, a.crop, a.crop)
        return torch.stack([torch.randint(hi, (n,), generator=self.generator) for hi in highs], dim=1)

    def apply(self, idx: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` (device) cropped, flipped and cut out with ``params`` (device, from :meth:`draw`)."""
        a = self.augment
        span = torch.arange(a.crop, device=self.device)
        rows = params[:, 0:1] + span
        cols = torch.where(params[:, 2:3].bool(), params[:, 1:2] + span.flip(0), params[:, 1:2] + span)
        chans = torch.arange(self.images.shape[1], device=self.device)
        x = self.images[idx[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None],
                        cols[:, None, None, :]].float().div_(255)
        if a.cutout:  # rows/columns [c - size/2, c + size/2) clipped to the image, as Cutout
            half = a.cutout // 2
            in_y = (span >= params[:, 3:4] - half) & (span < params[:, 3:4] + half)
            in_x = (span >= params[:, 4:5] - half) & (span < params[:, 4:5] + half)
            x.masked_fill_(in_y[:, None, :, None] & in_x[:, None, None, :], 0.0)
        return x

    def __iter__(self):
        n = len(self.labels)
        if self.augment is None:
            for idx in torch.arange(n, device=self.device).split(self.batch_size):
                yield self.images[idx].float().div_(255), self.labels[idx]
            return
        world, rank = dist.world_size(), dist.rank()
        for idx in torch.randperm(n, generator=self.generator).split(self.batch_size):
            params = self.draw(len(idx))
            if world > 1:
                idx, params = idx.tensor_split(world)[rank], params.tensor_split(world)[rank]
            idx = idx.to(self.device, non_blocking=True)
            yield self.apply(idx, params.to(self.device, non_blocking=True)), self.labels[idx]
