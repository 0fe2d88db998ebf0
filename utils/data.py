"""Transforms (both papers' train and test pipelines) and loaders (torchvision DataLoaders with a saved generator,
and the device-resident loader with augmentation on the device). Dataset definitions and integrity checks are in
``utils.datasets``.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import transforms
from tqdm.auto import tqdm

from . import distributed as dist
from .datasets import load_dataset
from .errors import UserError


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
    short = [f"the {len(d)} {what} images" for what, d in (("training", train_set), ("test", test_set))
             if subset and subset > len(d)]
    if short:
        print(f"note: --subset {subset} is more than {' and '.join(short)}: all of them are used", flush=True)
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
    # the test loader's workers draw their seed from a generator of their own, not from the global RNG (which drives
    # FGR's random start, GSeM's noise and PGD's starts): a resumed process then draws exactly what the first did
    test_loader = DataLoader(test_set, batch_size=test_batch_size or batch_size, shuffle=False,
                             persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed), **common)
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
