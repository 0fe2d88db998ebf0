"""Samplers and warps: native grid_sample vs the reference's gather sampler, units, double backward."""
import pytest
import torch
import torch.nn.functional as F

from utils import flow
from utils.flow import (
    gather_grid_sample,
    identity_grid,
    native_double_backward_supported,
    pixels_to_normalized,
    random_flow_start,
    resolve_sampler,
    warp,
)


def _off_integer_flow(b, h, w, dtype=torch.float64, scale=0.3, seed=0):
    """A flow that keeps every sampling point inside the image and away from integer pixel positions."""
    gen = torch.Generator().manual_seed(seed)
    frac = 0.1 + 0.8 * torch.rand(b, h, w, 2, generator=gen, dtype=dtype)  # fractional offset in (0.1, 0.9) px
    px = frac * scale / 0.9
    px[..., 0][:, :, -1] -= 1.0  # last column/row: step back inside the image
    px[..., 1][:, -1, :] -= 1.0
    return torch.stack([px[..., 0] * 2 / (w - 1), px[..., 1] * 2 / (h - 1)], dim=-1)


def test_zero_flow_is_identity():
    x = torch.rand(2, 3, 8, 8)
    for sampler in ("native", "gather"):
        assert torch.allclose(warp(x, torch.zeros(2, 8, 8, 2), sampler=sampler), x, atol=1e-6)


@pytest.mark.parametrize("sampler", ["native", "gather"])
def test_one_pixel_flow_shifts_by_one_pixel(sampler):
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    n = torch.zeros(1, 8, 8, 2, dtype=torch.float64)
    n[..., 0] = pixels_to_normalized(1.0, 8)  # sample one pixel to the right: z(r, c) = x(r, c + 1)
    z = warp(x, n, sampler=sampler)
    assert torch.allclose(z[..., :-1], x[..., 1:], atol=1e-10)
    n = torch.zeros(1, 8, 8, 2, dtype=torch.float64)
    n[..., 1] = pixels_to_normalized(1.0, 8)  # one pixel down: z(r, c) = x(r + 1, c)
    assert torch.allclose(warp(x, n, sampler=sampler)[..., :-1, :], x[..., 1:, :], atol=1e-10)


def test_identity_grid_units():
    g = identity_grid(torch.zeros(1, 1, 5, 9))
    assert torch.allclose(g[0, 0, :, 0], torch.linspace(-1, 1, 9))
    assert torch.allclose(g[0, :, 0, 1], torch.linspace(-1, 1, 5))
    assert pixels_to_normalized(1.0, 32) == pytest.approx(2 / 31)


def test_native_and_gather_agree_inside_the_image():
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    n = _off_integer_flow(2, 7, 9)
    grid = identity_grid(x) + n
    assert torch.allclose(gather_grid_sample(x, grid),
                          F.grid_sample(x, grid, align_corners=True), atol=1e-12)


def test_first_and_second_order_gradients_agree_at_non_integer_points():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    n0 = _off_integer_flow(2, 7, 9)
    results = {}
    for sampler in ("native", "gather"):
        n = n0.clone().requires_grad_(True)
        loss = F.conv2d(warp(x, n, sampler=sampler), w).tanh().sum()
        (g,) = torch.autograd.grad(loss, n, create_graph=True)
        second_w, second_n = torch.autograd.grad(g.pow(2).sum(), [w, n])
        results[sampler] = (g.detach(), second_w, second_n)
    for a, b in zip(results["native"], results["gather"]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sampler", ["native", "gather"])
def test_gradcheck_double_backward_float64(sampler):
    torch.manual_seed(0)
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64)
    n = _off_integer_flow(1, 5, 6).requires_grad_(True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def f(n, w):
        return F.conv2d(warp(x, n, sampler=sampler), w).tanh().sum()

    assert torch.autograd.gradcheck(f, (n, w))
    assert torch.autograd.gradgradcheck(f, (n, w))


def test_native_double_backward_detected_on_this_pytorch():
    # True on PyTorch 2.13+ (the authors' gather sampler is the fallback); the auto choice must follow the check.
    supported = native_double_backward_supported("cpu")
    assert resolve_sampler("auto", "cpu") == ("native" if supported else "gather")
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 13):
        assert supported


def test_fallback_chosen_when_native_double_backward_fails(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("derivative for grid_sampler_2d_backward is not implemented")

    flow.native_double_backward_supported.cache_clear()
    monkeypatch.setattr(flow.F, "grid_sample", broken)
    try:
        assert resolve_sampler("auto", "cpu") == "gather"
    finally:
        flow.native_double_backward_supported.cache_clear()


def test_random_start_is_detached_clamped_and_small():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    z = random_flow_start(x, 0.01)
    assert not z.requires_grad and z.min() >= 0 and z.max() <= 1
    assert 0 < (z - x).abs().mean() < 0.05
    assert torch.allclose(random_flow_start(x, 0.0), x.detach(), atol=1e-5)  # identity up to float rounding of the grid
