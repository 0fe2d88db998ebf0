"""Datasets read through torchvision from synthetic files in the official formats; clear errors otherwise."""
import os
import shutil

import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Subset

from synthetic import write_svhn
from utils.data import Cutout, DeviceLoader, fgr_device_transforms, fgr_transforms, make_loaders
from utils.datasets import load_dataset
from utils.errors import UserError


def test_cifar10_reference_layout_and_torchvision_layout(cifar10_root):
    ds = load_dataset("cifar10", cifar10_root, True, verify=False)  # <root>/cifar10/cifar-10-batches-py
    assert len(ds) == 100 and ds.classes[0] == "class0"
    ds2 = load_dataset("cifar10", os.path.join(cifar10_root, "cifar10"), False,
                       verify=False)  # <root>/cifar-10-batches-py
    assert len(ds2) == 40
    img, label = ds2[0]
    assert img.size == (32, 32) and 0 <= label < 10


def test_cifar100_fine_labels(cifar100_root):
    ds = load_dataset("cifar100", cifar100_root, True, verify=False)
    labels = [ds[i][1] for i in range(len(ds))]
    assert len(ds) == 60 and max(labels) >= 10 and max(labels) < 100


def test_svhn(tmp_path):
    write_svhn(str(tmp_path), n_train=20, n_test=10)
    ds = load_dataset("svhn", str(tmp_path), False, verify=False)
    assert len(ds) == 10 and all(0 <= ds[i][1] < 10 for i in range(10))


def test_missing_data_names_expected_files(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("cifar10", str(tmp_path / "nothing"), True, verify=False)
    msg = str(e.value)
    assert "data_batch_1" in msg and "test_batch" in msg and "cifar-10-batches-py" in msg
    assert "could not be downloaded" in msg


def test_corrupt_file_is_reported(cifar10_root, tmp_path):
    root = tmp_path / "c10"
    shutil.copytree(os.path.join(cifar10_root, "cifar10"), root)
    with open(root / "cifar-10-batches-py" / "data_batch_3", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="corrupt"):
        load_dataset("cifar10", str(root), True, verify=False)


def test_unknown_dataset():
    with pytest.raises(UserError, match="valid names: cifar10, cifar100, svhn, digits, mnist, fashionmnist"):
        load_dataset("emnist", "/tmp", True)


def test_reference_transforms_give_32px_and_deterministic_test_view(cifar10_root):
    train_tf, test_tf = fgr_transforms("reference")
    ds = load_dataset("cifar10", cifar10_root, False, test_tf, verify=False)
    a, b = ds[0][0], ds[0][0]
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    raw = load_dataset("cifar10", cifar10_root, False, fgr_transforms("standard")[1], verify=False)[0][0]
    assert not torch.equal(a, raw)  # resize 36 + centre crop 32 is not the raw image
    train = load_dataset("cifar10", cifar10_root, True, train_tf, verify=False)
    assert train[0][0].shape == (3, 32, 32)


def test_subset_and_seeded_order(cifar10_root):
    tf = fgr_transforms("none")
    tl, vl, gen = make_loaders("cifar10", cifar10_root, 8, *tf, subset=24, workers=0, seed=3, verify=False)
    assert len(tl.dataset) == 24 and len(vl.dataset) == 24
    first = [y.tolist() for _, y in tl]
    tl2, _, _ = make_loaders("cifar10", cifar10_root, 8, *tf, subset=24, workers=0, seed=3, verify=False)
    assert first == [y.tolist() for _, y in tl2]


# ---- the dataset on the device, augmented there (DeviceLoader) ----

def _device_loader(root, augment, batch=16, subset=40):
    train_tf, _, aug = fgr_device_transforms(augment)
    ds = Subset(load_dataset("cifar10", root, True, train_tf, verify=False), range(subset))
    return DeviceLoader(ds, batch, "cpu", aug, generator=torch.Generator().manual_seed(0)), ds


@pytest.mark.parametrize("augment", ["reference", "standard"])
def test_device_crop_and_flip_equal_torchvision_ops(cifar10_root, augment):
    """Each device-augmented image equals torchvision's crop (+ pad) and hflip of the same PIL image at the drawn
    offsets, bit for bit."""
    loader, _ = _device_loader(cifar10_root, augment)
    pil = load_dataset("cifar10", cifar10_root, True, verify=False)
    idx = torch.arange(16)
    params = loader.draw(16)
    params[:4, 2], params[4:8, 2] = 0, 1  # both flip states present
    x = loader.apply(idx, params)
    for i in range(16):
        img = pil[i][0]
        img = TF.resize(img, [36, 36]) if augment == "reference" else TF.pad(img, 4, fill=0)
        img = TF.crop(img, int(params[i, 0]), int(params[i, 1]), 32, 32)
        if params[i, 2]:
            img = TF.hflip(img)
        assert torch.equal(x[i], TF.pil_to_tensor(img).float() / 255), i


def test_device_cutout_equals_cutout_class(cifar10_root):
    loader, _ = _device_loader(cifar10_root, "none")
    loader.augment = loader.augment._replace(cutout=16)
    ones = torch.ones(3, 32, 32)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = Cutout(16)(ones)
        torch.manual_seed(seed)
        cy, cx = int(torch.randint(32, ())), int(torch.randint(32, ()))
        loader.images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
        got = loader.apply(torch.tensor([0]), torch.tensor([[0, 0, 0, cy, cx]]))[0]
        assert torch.equal(got, expected), (cy, cx)


def test_device_augmentation_frequencies(cifar10_root):
    """Offsets uniform over the 5 (resize 36) or 9 (pad 4) positions, flips with probability 1/2, Cutout centres
    uniform over the 32 rows and columns: each frequency within 4 standard errors."""
    n = 20000
    for augment, positions in (("reference", 5), ("standard", 9)):
        loader, _ = _device_loader(cifar10_root, augment)
        loader.augment = loader.augment._replace(cutout=16)
        p = loader.draw(n)
        for col, k in ((0, positions), (1, positions), (2, 2), (3, 32), (4, 32)):
            freq = torch.bincount(p[:, col], minlength=k).float() / n
            assert len(freq) == k
            se = (1 / k * (1 - 1 / k) / n) ** 0.5
            assert (freq - 1 / k).abs().max() < 4 * se, (augment, col, freq)


def test_device_loader_epoch_covers_every_image_once_and_resumes(cifar10_root):
    loader, ds = _device_loader(cifar10_root, "none", batch=16, subset=40)
    raw = torch.stack([ds[i][0] for i in range(40)]).float() / 255
    labels = torch.tensor([ds[i][1] for i in range(40)])
    state = loader.generator.get_state()
    seen, batches = [], []
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and len(x) <= 16
        for img, lab in zip(x, y):
            match = [i for i in range(40) if torch.equal(raw[i], img) and labels[i] == lab]
            assert match  # no crop/flip with augment 'none': the image itself, with its own label
            seen.append(match[0])
        batches.append(y)
    assert len(batches) == len(loader) == 3 and sorted(seen) == list(range(40))
    loader.generator.set_state(state)  # the same generator state gives the same epoch (resume)
    assert all(torch.equal(a, y) for a, (_, y) in zip(batches, loader))
    test = DeviceLoader(ds, 16, "cpu")  # evaluation: in order, no augmentation
    assert torch.equal(torch.cat([x for x, _ in test]), raw)


def test_device_loader_ranks_share_the_single_process_batch(cifar10_root, monkeypatch):
    """Under torchrun each rank keeps a contiguous share of the global batch drawn from the same generator state:
    the shares put together are exactly the single-process batch (images, augmentation and labels)."""
    from utils import distributed as dist

    loader, _ = _device_loader(cifar10_root, "reference", batch=16, subset=40)
    state = loader.generator.get_state()
    single = list(loader)
    shares = []
    for r in range(2):
        loader.generator.set_state(state)
        monkeypatch.setattr(dist, "world_size", lambda: 2)
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        shares.append(list(loader))
    monkeypatch.undo()
    for (x, y), (x0, y0), (x1, y1) in zip(single, *shares):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_and_fashion_mnist_through_torchvision_padded_to_32(tmp_path, name, folder):
    from synthetic import write_mnist

    write_mnist(str(tmp_path), folder)
    train = load_dataset(name, str(tmp_path), True)
    test = load_dataset(name, str(tmp_path), False, fgr_transforms("reference")[1])
    img, label = train[0]
    assert img.size == (32, 32) and img.mode == "L" and 0 <= label < 10 and len(train) == 64
    assert test[0][0].shape == (1, 32, 32)
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):  # offline: one clear error naming the files
        load_dataset(name, str(tmp_path / "none"), True)
