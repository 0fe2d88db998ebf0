"""The one warp helper: flow fields, bilinear samplers and their units.

Conventions (the FGR authors' code, xpf/Flow-Gradient-Regularization):
- A flow ``n`` has shape B x H x W x 2, component 0 horizontal (x, column) and 1 vertical (y, row), in *normalised*
  ``align_corners=True`` units: -1 and +1 are the centres of the corner pixels, so one pixel is ``2 / (W - 1)``
  normalised units (2/31 ~= 0.0645 at 32 x 32; eps = 0.01 ~= 0.155 px).
- Warping is a backward warp: ``z(p) = x(p + n(p))``, ``grid = identity + n``.

Two samplers:
- ``native``: ``F.grid_sample`` (fast). Its double backward with respect to the grid exists on recent PyTorch
  (checked at run time by :func:`native_double_backward_supported`).
- ``gather``: the FGR authors' sampler built from differentiable primitives (floor, clamp, gather), differentiable
  to any order on every PyTorch version. It replicates the last row/column beyond the bottom/right edge and
  extrapolates linearly beyond the top/left edge.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Native sampler with border padding evaluated at identity + this offset reproduces the gather sampler's one-sided
# (forward) differences at pixel centres, including the zero x-gradient in the last column.
GATHER_EQUIVALENT_OFFSET = 1e-6


def pixels_to_normalized(pixels: float, size: int) -> float:
    """Convert a displacement in pixels to normalised align_corners=True units for an axis of ``size`` pixels."""
    return pixels * 2.0 / (size - 1)


def normalized_to_pixels(value: float, size: int) -> float:
    """Convert a normalised align_corners=True displacement to pixels for an axis of ``size`` pixels."""
    return value * (size - 1) / 2.0


def pixel_flow_to_normalized(flow_px: torch.Tensor) -> torch.Tensor:
    """B x 2 x H x W flow in pixels (channel 0 horizontal, 1 vertical; the stAdv/ADef layout) -> B x H x W x 2
    normalised align_corners=True flow (this module's layout)."""
    _, _, h, w = flow_px.shape
    scale = flow_px.new_tensor([2.0 / (w - 1), 2.0 / (h - 1)]).view(1, 2, 1, 1)
    return (flow_px * scale).permute(0, 2, 3, 1)


def flow_norms_pixels(flow: torch.Tensor) -> dict:
    """Per-example magnitudes of a normalised B x H x W x 2 flow, in pixels: ``tnorm`` (the largest displacement
    length, ADef's T-norm), ``linf`` (the largest displacement along one axis) and ``mean`` (mean displacement
    length)."""
    _, h, w, _ = flow.shape
    px = flow * flow.new_tensor([(w - 1) / 2.0, (h - 1) / 2.0])
    length = px.pow(2).sum(-1).sqrt().flatten(1)
    return {"tnorm": length.max(1)[0], "linf": px.abs().flatten(1).max(1)[0], "mean": length.mean(1)}


def identity_grid(x: torch.Tensor) -> torch.Tensor:
    """The identity sampling grid for ``x`` (B x C x H x W): B x H x W x 2, align_corners=True, as the reference
    builds it (``affine_grid`` with the identity matrix), in ``x``'s dtype and device."""
    b, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    return F.affine_grid(theta.expand(b, 2, 3), [b, c, h, w], align_corners=True)


def gather_grid_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The FGR authors' bilinear sampler (align_corners=True), differentiable to any order.

    Args:
        x: B x C x H x W images.
        grid: B x Ho x Wo x 2 sampling locations in normalised units.
    Returns:
        B x C x Ho x Wo samples.
    """
    b, c, h, w = x.shape
    _, ho, wo, _ = grid.shape
    col = (w - 1) * (grid[..., 0] + 1) / 2
    row = (h - 1) * (grid[..., 1] + 1) / 2
    c0 = col.detach().floor().clamp(0, w - 1)
    r0 = row.detach().floor().clamp(0, h - 1)
    c1 = (c0 + 1).clamp(0, w - 1)
    r1 = (r0 + 1).clamp(0, h - 1)
    dc = (col - c0).unsqueeze(1)  # weights are not clamped (reference)
    dr = (row - r0).unsqueeze(1)
    flat = x.reshape(b, c, h * w)

    def fetch(r, cc):
        idx = (r * w + cc).long().view(b, 1, ho * wo).expand(b, c, ho * wo)
        return flat.gather(2, idx).view(b, c, ho, wo)

    # along the rows first, then the columns, in the authors' order of operations (bit-identical results)
    left = fetch(r0, c0) * (1 - dr) + fetch(r1, c0) * dr
    right = fetch(r0, c1) * (1 - dr) + fetch(r1, c1) * dr
    return left * (1 - dc) + right * dc


def warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros", sampler: str = "native") -> torch.Tensor:
    """Backward-warp images by a flow: ``z(p) = x(p + flow(p))``.

    Args:
        x: B x C x H x W images in [0, 1].
        flow: B x H x W x 2 displacement in normalised align_corners=True units (1 px = 2 / (W - 1)).
        padding_mode: for the native sampler ('zeros' as the reference's attack and random start, or 'border').
        sampler: 'native' (``F.grid_sample``) or 'gather' (the reference's differentiable sampler).
    """
    grid = identity_grid(x) + flow
    if sampler == "gather":
        return gather_grid_sample(x, grid)
    if sampler != "native":
        raise ValueError(f"unknown sampler {sampler!r}; use 'native' or 'gather'")
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def random_flow_start(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """FGR's random start (the authors' ``main.py``): warp by i.i.d. N(0, sigma^2) flow noise (normalised units),
    native sampler,
    zeros padding, clamp to [0, 1], detached."""
    b, _, h, w = x.shape
    noise = torch.randn(b, h, w, 2, dtype=x.dtype, device=x.device) * sigma
    with torch.no_grad():
        return warp(x, noise, padding_mode="zeros").clamp_(0, 1)


@functools.lru_cache(maxsize=None)
def native_double_backward_supported(device_type: str = "cpu") -> bool:
    """Whether ``F.grid_sample``'s gradient w.r.t. the grid can itself be differentiated (into weights and grid).

    Checked once per device type by running the FGR pattern (flow gradient with create_graph, backward of its squared
    norm) and comparing with the gather sampler on a tiny problem in float64.
    """
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 2, 5, 5, generator=gen, dtype=torch.float64).to(device_type)
        w = torch.randn(2, 2, 1, 1, generator=gen, dtype=torch.float64).to(device_type).requires_grad_(True)
        flow = (0.05 * torch.rand(1, 5, 5, 2, generator=gen, dtype=torch.float64)).to(device_type)

        def second_order(sampler):
            n = flow.clone().requires_grad_(True)
            z = warp(x, n, padding_mode="border", sampler=sampler)
            loss = F.conv2d(z, w).pow(2).sum()
            (g,) = torch.autograd.grad(loss, n, create_graph=True)
            (gw,) = torch.autograd.grad(g.pow(2).sum(), w)
            return gw

        return bool(torch.allclose(second_order("native"), second_order("gather"), rtol=1e-6, atol=1e-9))
    except RuntimeError:  # "derivative for grid_sampler_2d_backward is not implemented" on older PyTorch
        return False


def resolve_sampler(sampler: str, device_type: str) -> str:
    """'auto' -> 'native' where its double backward works on this PyTorch and device, else 'gather'."""
    if sampler == "auto":
        return "native" if native_double_backward_supported(device_type) else "gather"
    if sampler not in ("native", "gather"):
        raise ValueError(f"unknown sampler {sampler!r}; use 'auto', 'native' or 'gather'")
    return sampler
