"""Datasets read through torchvision from synthetic files in the official formats; clear errors otherwise."""
import os
import shutil

import pytest
import torch

from synthetic import write_svhn
from utils.data import fgr_transforms, load_dataset, make_loaders
from utils.errors import UserError


def test_cifar10_reference_layout_and_torchvision_layout(cifar10_root):
    ds = load_dataset("cifar10", cifar10_root, True)  # <root>/cifar10/cifar-10-batches-py
    assert len(ds) == 100 and ds.classes[0] == "class0"
    ds2 = load_dataset("cifar10", os.path.join(cifar10_root, "cifar10"), False)  # <root>/cifar-10-batches-py
    assert len(ds2) == 40
    img, label = ds2[0]
    assert img.size == (32, 32) and 0 <= label < 10


def test_cifar100_fine_labels(cifar100_root):
    ds = load_dataset("cifar100", cifar100_root, True)
    labels = [ds[i][1] for i in range(len(ds))]
    assert len(ds) == 60 and max(labels) >= 10 and max(labels) < 100


def test_svhn(tmp_path):
    write_svhn(str(tmp_path), n_train=20, n_test=10)
    ds = load_dataset("svhn", str(tmp_path), False)
    assert len(ds) == 10 and all(0 <= ds[i][1] < 10 for i in range(10))


def test_missing_data_names_expected_files(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("cifar10", str(tmp_path / "nothing"), True)
    msg = str(e.value)
    assert "data_batch_1" in msg and "test_batch" in msg and "cifar-10-batches-py" in msg
    assert "could not be downloaded" in msg


def test_corrupt_file_is_reported(cifar10_root, tmp_path):
    root = tmp_path / "c10"
    shutil.copytree(os.path.join(cifar10_root, "cifar10"), root)
    with open(root / "cifar-10-batches-py" / "data_batch_3", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="corrupt"):
        load_dataset("cifar10", str(root), True)


def test_unknown_dataset():
    with pytest.raises(UserError, match="valid names: cifar10, cifar100, svhn"):
        load_dataset("mnist", "/tmp", True)


def test_reference_transforms_give_32px_and_deterministic_test_view(cifar10_root):
    train_tf, test_tf = fgr_transforms("reference")
    ds = load_dataset("cifar10", cifar10_root, False, test_tf)
    a, b = ds[0][0], ds[0][0]
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    raw = load_dataset("cifar10", cifar10_root, False, fgr_transforms("standard")[1])[0][0]
    assert not torch.equal(a, raw)  # resize 36 + centre crop 32 is not the raw image
    train = load_dataset("cifar10", cifar10_root, True, train_tf)
    assert train[0][0].shape == (3, 32, 32)


def test_subset_and_seeded_order(cifar10_root):
    tf = fgr_transforms("none")
    tl, vl, gen = make_loaders("cifar10", cifar10_root, 8, *tf, subset=24, workers=0, seed=3)
    assert len(tl.dataset) == 24 and len(vl.dataset) == 24
    first = [y.tolist() for _, y in tl]
    tl2, _, _ = make_loaders("cifar10", cifar10_root, 8, *tf, subset=24, workers=0, seed=3)
    assert first == [y.tolist() for _, y in tl2]
