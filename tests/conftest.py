import sys, os
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
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.mnist as mnist
    import torchvision.datasets.svhn as svhn
    from urllib.error import URLError

    def refuse(*a, **k):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(svhn, "download_url", refuse)
    monkeypatch.setattr(mnist, "download_and_extract_archive", refuse)
