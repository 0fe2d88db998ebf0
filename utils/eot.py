"""The one EOT helper: expectation over transformation, here over the GSeM noise (spec gsem.md §2.4).

Two forms with the same expectation:
- looped (the reference): n forward/backward passes of the batch, gradients averaged;
- batched: the batch repeated n times in one forward, gradients averaged per example. Exact in expectation when the
  examples do not interact (eval-mode BatchNorm, as in every attack); in train mode BatchNorm statistics would be
  taken over the n copies at once, so weight updates use the looped form.
"""
from __future__ import annotations

import contextlib

import torch


def eot_input_grad(model, x: torch.Tensor, y: torch.Tensor, loss_fn, n: int = 1, batched: bool = True):
    """Gradient of ``loss_fn(model(x), y)`` with respect to ``x``, averaged over ``n`` noisy passes.

    Args:
        model: classifier on [0, 1] images (a GSeM model draws fresh noise at every forward).
        x: B x C x H x W input; y: B labels (or any per-example target ``loss_fn`` takes).
        loss_fn: ``loss_fn(logits, y) -> B`` per-example losses (summed, so examples do not rescale each other).
        n: number of EOT samples (>= 1).
        batched: one forward of n x B examples instead of n forwards of B.
    Returns:
        ``(grad, loss)``: B x C x H x W mean gradient and the B per-example losses averaged over the n passes.
    """
    if n < 1:
        raise ValueError(f"EOT needs n >= 1, got {n}")
    x = x.detach()
    if batched and n > 1:
        xr = x.repeat(n, *[1] * (x.dim() - 1)).requires_grad_(True)
        losses = loss_fn(model(xr), y.repeat(n, *[1] * (y.dim() - 1)))
        (g,) = torch.autograd.grad(losses.sum(), xr)
        b = x.shape[0]
        return g.view(n, *x.shape).mean(0), losses.detach().view(n, b).mean(0)
    grad = torch.zeros_like(x)
    loss_sum = torch.zeros(x.shape[0], device=x.device)
    for _ in range(n):
        xi = x.clone().requires_grad_(True)
        losses = loss_fn(model(xi), y)
        (g,) = torch.autograd.grad(losses.sum(), xi)
        grad += g
        loss_sum += losses.detach().float()
    return grad / n, loss_sum / n


def eot_backward(loss_fn, n: int = 1, model=None):
    """Accumulate weight gradients over ``n`` noisy passes (the reference's ``gra_eot_num``): calls
    ``loss_fn() -> (loss, logits)`` n times, backpropagating ``loss / n`` each time (so the accumulated ``.grad`` is
    the mean gradient, and train-mode BatchNorm sees n separate updates as in the reference).

    With a DistributedDataParallel ``model``, gradients are synchronised once, on the last pass.
    Returns ``(mean loss (detached), logits of the last pass (detached))``.
    """
    if n < 1:
        raise ValueError(f"EOT needs n >= 1, got {n}")
    total = 0.0
    for i in range(n):
        sync = i == n - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            loss, logits = loss_fn()
            (loss / n).backward()
        total = total + loss.detach()
    return total / n, logits.detach()
