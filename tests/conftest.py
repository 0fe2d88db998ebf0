import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch

from synthetic import write_cifar10, write_cifar100

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory):
    """Synthetic CIFAR-10 in the FGR reference layout: <root>/cifar10/cifar-10-batches-py."""
    root = tmp_path_factory.mktemp("data")
    write_cifar10(str(root / "cifar10"), n_train=100, n_test=40)
    return str(root)


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory):
    """Synthetic CIFAR-100 in the torchvision layout: <root>/cifar-100-python."""
    root = tmp_path_factory.mktemp("data100")
    write_cifar100(str(root), n_train=60, n_test=30)
    return str(root)


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Tests never touch the network: a download attempt fails at once, as it does offline."""
    from urllib.error import URLError

    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.mnist as mnist
    import torchvision.datasets.svhn as svhn

    def refuse(*a, **k):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(svhn, "download_url", refuse)
    monkeypatch.setattr(mnist, "download_and_extract_archive", refuse)


# --- the suite's tiny models (one place; real-data models are in realdata.py) ---------------------------------------

def unregister_attack(name: str) -> None:
    """Remove an attack a test registered (and the knobs no other attack uses)."""
    from attacks.registry import _KNOBS, ATTACKS

    spec = ATTACKS.pop(name)
    used = {k.name for s in ATTACKS.values() for k in s.knobs}
    for k in spec.knobs:
        if k.name not in used:
            _KNOBS.pop(k.name, None)


def tiny_classifier(classes=10, width=8, bn=True, dtype=torch.float32, in_channels=3):
    """Conv -> (BN) -> ReLU -> pool to 4 x 4 -> Linear: any input size, BatchNorm statistics to watch."""
    torch.manual_seed(0)
    import torch.nn as nn

    layers = [nn.Conv2d(in_channels, width, 3, padding=1)] + ([nn.BatchNorm2d(width)] if bn else [])
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(width * 16, classes)]
    return nn.Sequential(*layers).to(dtype)


def tiny_gsem(beta=4, classes=10, size=32):
    """Conv -> GSeM(4) -> strided conv -> ReLU -> Linear on ``size`` x ``size`` images, in eval mode (beta = 0: a
    deterministic forward)."""
    import torch.nn as nn

    from models import GradSemiMaskModule

    torch.manual_seed(0)
    side = (size - 3) // 2 + 1
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), GradSemiMaskModule(4, 6, beta), nn.Conv2d(4, 4, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, classes)).eval()


def trained_tiny_model():
    """A small conv net fitted for a few steps to a smooth synthetic task on 16 x 16 images (undefended): left half
    brighter than the right."""
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(16 * 16, 2))
    x = torch.rand(64, 3, 16, 16)
    y = (x[:, :, :, :8].mean((1, 2, 3)) > x[:, :, :, 8:].mean((1, 2, 3))).long()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def linear_task_model():
    """An undefended (nearly linear) conv net fitted for 20 steps to a linear teacher on 32 x 32 images."""
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 2))
    x = torch.rand(128, 3, 32, 32)
    w = torch.randn(3, 32, 32)
    y = ((x - 0.5) * w).sum((1, 2, 3)).gt(0).long()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y
