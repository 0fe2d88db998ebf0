"""Gradient regularizers: FGR (flow gradient, Xia & Li 2021) and IGR (input gradient, Ross & Doshi-Velez 2018).

Both use the reference reduction (xpf/Flow-Gradient-Regularization ``main.py``): the gradient of the *batch-mean*
cross-entropy, squared, summed per example over all its coordinates, then averaged over the batch. The objective is
``CE + lamb * R`` and is backpropagated through R (double backward). Because CE is a batch mean, R scales as
1 / B^2 per example: a given lambda means what it means only at the batch size it was tuned for (128 in the
reference). The training loss ``CE + lambda * R`` is ``utils.losses.gradient_regularized``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .flow import GATHER_EQUIVALENT_OFFSET, random_flow_start, resolve_sampler, warp


def flow_gradient_penalty(model, x, y, sampler: str = "auto", create_graph: bool = True):
    """FGR penalty at flow n = 0 around ``x``.

    Args:
        model: classifier on [0, 1] images (its train/eval mode is used as is; the reference trains in train mode).
        x: B x C x H x W images in [0, 1]; y: B labels.
        sampler: 'gather' (the reference's sampler), 'native' (``F.grid_sample`` with border padding at
            identity + 1e-6, which reproduces the gather sampler's one-sided differences and its zero gradient in the
            last row/column, value-corrected to the gather sampler's value), or 'auto' (native where its double
            backward works, else gather).
        create_graph: keep the graph of the flow gradient so R can be backpropagated into the weights.
    Returns:
        ``(ce, R, logits)``: batch-mean cross-entropy, ``mean_b sum_{h,w,k} (dCE/dn)^2``, and the logits.
    """
    sampler = resolve_sampler(sampler, x.device.type)
    b, _, h, w = x.shape
    n = torch.zeros(b, h, w, 2, dtype=x.dtype, device=x.device, requires_grad=True)
    if sampler == "native":
        # Evaluated at identity + offset, grid_sample's grid gradient is the gather sampler's one-sided difference,
        # but its value is x shifted by the offset. The value is replaced (without gradient) by the gather sampler's
        # own, which is x up to the float32 rounding of the identity grid (~1e-6; train-mode BatchNorm at batch 128
        # turns even that into a 3e-3 difference of the weight gradient), so R and its weight gradient match.
        with torch.no_grad():
            shifted = warp(x, n + GATHER_EQUIVALENT_OFFSET, padding_mode="border")
            value = warp(x, n, sampler="gather")
        z = value + (warp(x, n + GATHER_EQUIVALENT_OFFSET, padding_mode="border") - shifted)
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


def penalty_ratio(model, batches, *, rs_sigma: float = 0.01, sampler: str = "auto") -> float:
    """mean R_FGR / mean R_IGR of ``model`` (train mode, as in training, on a copy: the model and its BatchNorm
    statistics are left alone) over ``batches`` of ``(x, y)``, each after the random flow start: the factor by which
    IGR's lambda must exceed FGR's for the two penalties to weigh the same in the loss. At equal lambda the IGR
    penalty is far smaller (the flow gradient is the input gradient times the image gradient, scaled by
    (W - 1) / 2 per normalised unit)."""
    net = copy.deepcopy(model).train()
    fgr = igr = 0.0
    for x, y in batches:
        x = random_flow_start(x, rs_sigma) if rs_sigma > 0 else x
        fgr += flow_gradient_penalty(net, x, y, sampler=sampler, create_graph=False)[1].item()
        igr += input_gradient_penalty(net, x, y, create_graph=False)[1].item()
    if igr <= 0:
        raise ValueError("the input-gradient penalty is 0 on these batches: no ratio to match")
    return fgr / igr
