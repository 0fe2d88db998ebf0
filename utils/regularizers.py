"""Gradient regularizers: FGR (flow gradient, Xia & Li 2021) and IGR (input gradient, Ross & Doshi-Velez 2018).

Both use the reference reduction (spec fgr.md §2.1): the gradient of the *batch-mean* cross-entropy, squared,
summed per example over all its coordinates, then averaged over the batch. The objective is ``CE + lamb * R`` and is
backpropagated through R (double backward). Because CE is a batch mean, R scales as 1 / B^2 per example: a given
lambda means what it means only at the batch size it was tuned for (128 in the reference).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import world_size
from .flow import GATHER_EQUIVALENT_OFFSET, random_flow_start, resolve_sampler, warp


def flow_gradient_penalty(model, x, y, sampler: str = "auto", create_graph: bool = True):
    """FGR penalty at flow n = 0 around ``x``.

    Args:
        model: classifier on [0, 1] images (its train/eval mode is used as is; the reference trains in train mode).
        x: B x C x H x W images in [0, 1]; y: B labels.
        sampler: 'gather' (the reference's sampler), 'native' (``F.grid_sample`` with border padding at
            identity + 1e-6, which reproduces the gather sampler's one-sided differences and its zero gradient in the
            last row/column; spec §2.4), or 'auto' (native where its double backward works, else gather).
        create_graph: keep the graph of the flow gradient so R can be backpropagated into the weights.
    Returns:
        ``(ce, R, logits)``: batch-mean cross-entropy, ``mean_b sum_{h,w,k} (dCE/dn)^2``, and the logits.
    """
    sampler = resolve_sampler(sampler, x.device.type)
    b, _, h, w = x.shape
    n = torch.zeros(b, h, w, 2, dtype=x.dtype, device=x.device, requires_grad=True)
    if sampler == "native":
        z = warp(x, n + GATHER_EQUIVALENT_OFFSET, padding_mode="border")
    else:
        z = warp(x, n, sampler="gather")
    logits = model(z)
    ce = F.cross_entropy(logits, y)
    (g,) = torch.autograd.grad(ce, n, create_graph=create_graph)
    return ce, g.pow(2).sum(dim=(1, 2, 3)).mean(), logits


def input_gradient_penalty(model, x, y, create_graph: bool = True):
    """IGR penalty with FGR's reduction: ``mean_b sum_{c,h,w} (dCE/dx)^2`` (CE a batch mean).

    Returns ``(ce, R, logits)`` as :func:`flow_gradient_penalty`.
    """
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    (g,) = torch.autograd.grad(ce, x, create_graph=create_graph)
    return ce, g.pow(2).sum(dim=(1, 2, 3)).mean(), logits


PENALTIES = {"fgr": flow_gradient_penalty, "igr": input_gradient_penalty}


class GradientRegularizedCE:
    """Training criterion ``CE + lamb * R`` for the shared training loop (``utils.engine``).

    Args:
        reg: 'fgr' or 'igr'.
        lamb: regularisation weight (>= 0); 0 is plain cross-entropy on the clean (augmented) batch, as the
            reference (no random start, no sampler).
        rs_sigma: std of the random flow start in normalised units (reference 0.01); applied when lamb > 0.
        sampler: FGR sampler ('auto', 'native', 'gather'); ignored by IGR.
    Calling it returns ``(loss, logits, logs)`` where logs holds the detached CE and R.
    """

    def __init__(self, reg: str = "fgr", lamb: float = 0.0, rs_sigma: float = 0.01, sampler: str = "auto"):
        if reg not in PENALTIES:
            raise ValueError(f"unknown regularizer {reg!r}; use one of {sorted(PENALTIES)}")
        self.reg, self.lamb, self.rs_sigma, self.sampler = reg, float(lamb), float(rs_sigma), sampler

    def __call__(self, model, x, y):
        if self.lamb == 0:
            logits = model(x)
            ce = F.cross_entropy(logits, y)
            return ce, logits, {"ce": ce.detach()}
        if self.rs_sigma > 0:
            x = random_flow_start(x, self.rs_sigma)
        if self.reg == "fgr":
            ce, r, logits = flow_gradient_penalty(model, x, y, sampler=self.sampler)
        else:
            ce, r, logits = input_gradient_penalty(model, x, y)
        # Under DDP each of W processes sees B/W images and its CE is a mean over them, so its per-example
        # gradients are W times those of the global-batch mean: dividing R by W^2 keeps lambda's meaning (the
        # averaged update equals the single-process one on the global batch).
        r = r / world_size() ** 2
        return ce + self.lamb * r, logits, {"ce": ce.detach(), "reg": r.detach()}
