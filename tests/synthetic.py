"""Small synthetic datasets written in the real on-disk formats (CIFAR pickles, SVHN .mat).

Images carry a class-dependent colour and stripe pattern plus noise, so tiny models can learn them in a few steps.
"""
from __future__ import annotations

import os
import pickle

import numpy as np


def _images(n: int, num_classes: int, rng: np.random.Generator):
    labels = rng.integers(0, num_classes, size=n)
    base = np.zeros((n, 32, 32, 3), dtype=np.float64)
    for i, c in enumerate(labels):
        hue = c / num_classes
        base[i, ..., 0] = 0.5 + 0.4 * np.cos(2 * np.pi * hue)
        base[i, ..., 1] = 0.5 + 0.4 * np.sin(2 * np.pi * hue)
        period = 2 + (c % 5)
        base[i, :, :, 2] = (np.arange(32)[None, :] // period % 2)
    base += rng.normal(0, 0.08, size=base.shape)
    return (np.clip(base, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


def write_cifar10(root: str, n_train: int = 100, n_test: int = 50, seed: int = 0) -> str:
    """Write ``<root>/cifar-10-batches-py`` (5 training batches, test batch, meta) as the official pickles."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    per = n_train // 5
    for i in range(1, 6):
        x, y = _images(per, 10, rng)
        _dump(os.path.join(folder, f"data_batch_{i}"),
              {"batch_label": f"training batch {i} of 5", "labels": y.tolist(),
               "data": x.transpose(0, 3, 1, 2).reshape(per, -1), "filenames": [f"{i}_{j}.png" for j in range(per)]})
    x, y = _images(n_test, 10, rng)
    _dump(os.path.join(folder, "test_batch"),
          {"batch_label": "testing batch 1 of 1", "labels": y.tolist(),
           "data": x.transpose(0, 3, 1, 2).reshape(n_test, -1), "filenames": [f"t_{j}.png" for j in range(n_test)]})
    _dump(os.path.join(folder, "batches.meta"),
          {"num_cases_per_batch": per, "label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return folder


def write_cifar100(root: str, n_train: int = 100, n_test: int = 50, seed: int = 0) -> str:
    """Write ``<root>/cifar-100-python`` (train, test, meta) as the official pickles."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = _images(n, 100, rng)
        _dump(os.path.join(folder, split),
              {"filenames": [f"{split}_{j}.png" for j in range(n)], "batch_label": split,
               "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
               "data": x.transpose(0, 3, 1, 2).reshape(n, -1)})
    _dump(os.path.join(folder, "meta"),
          {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]})
    return folder


def write_svhn(root: str, n_train: int = 100, n_test: int = 50, seed: int = 0) -> str:
    """Write ``<root>/train_32x32.mat`` and ``test_32x32.mat`` (X: 32x32x3xN uint8, y: Nx1 with 10 for digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = _images(n, 10, rng)
        y_mat = np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)
        savemat(os.path.join(root, f"{split}_32x32.mat"), {"X": x.transpose(1, 2, 3, 0), "y": y_mat})
    return root


def write_mnist(root: str, folder: str = "MNIST", n_train: int = 64, n_test: int = 32, seed: int = 0) -> str:
    """Write ``<root>/<folder>/raw`` with the four idx files (big-endian headers, uint8 data) of MNIST's format;
    ``folder`` = ``FashionMNIST`` for Fashion-MNIST. A class-dependent bar on noise, 28 x 28."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 4 + 2 * c: 6 + 2 * c, 4:24] = 255
        with open(os.path.join(raw, f"{split}-images-idx3-ubyte"), "wb") as f:
            f.write(np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        with open(os.path.join(raw, f"{split}-labels-idx1-ubyte"), "wb") as f:
            f.write(np.array([2049, n], dtype=">i4").tobytes() + labels.tobytes())
    return raw


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
