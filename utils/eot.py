"""EOT helpers: expectation over transformation (Athalye et al., ICML 2018), here over the GSeM noise.

Two forms with the same expectation:
- looped (the reference): n forward/backward passes of the batch, gradients averaged;
- batched: the batch repeated in one forward (in chunks of at most ``max_batch`` images), gradients averaged per
  example. Exact in expectation when the examples do not interact (eval-mode BatchNorm, as in every attack); in
  train mode BatchNorm statistics would be taken over the copies at once, so weight updates use the looped form.
"""
from __future__ import annotations

import contextlib
import math

import torch

# Most images per batched-EOT forward. CPU: measured per-image time of a GSeM-ResNet-18 input-gradient pass (2-core
# AMX Xeon): fp32 22-25 ms at 32-64 images, 28-31 ms at 128; bf16 + channels_last 10.7 ms at 64, 10.1 at 128, 11.8
# at 640; 64 is within 6% of the best for both. CUDA: a memory guard, not tuned on a GPU: the activations of 1024
# WRN-28-10 images (~28 MB each in fp32) fit an 80 GB card, 512 x 20 would not.
EOT_MAX_BATCH = {"cpu": 64, "cuda": 1024}


def is_stochastic(model) -> bool:
    """Whether ``model`` draws randomness in its forward: a module that says so with ``stochastic = True`` (a GSeM
    module with noise, beta > 0). EOT over a deterministic model averages identical passes, so one pass is taken."""
    return any(getattr(m, "stochastic", False) for m in model.modules())


def eot_passes(model, eot_iter: int) -> int:
    """The number of noisy passes EOT needs on ``model``: ``eot_iter``, or 1 when the model is deterministic (the same
    expectation, without ``eot_iter - 1`` identical passes)."""
    if eot_iter < 1:
        raise ValueError(f"EOT needs eot_iter >= 1, got {eot_iter}")
    return eot_iter if is_stochastic(model) else 1


def eot_input_grad(model, x: torch.Tensor, y: torch.Tensor, loss_fn, eot_iter: int = 1, batched: bool = True,
                   max_batch: int | None = None):
    """Gradient of ``loss_fn(model(x), y)`` with respect to ``x``, averaged over ``eot_iter`` noisy passes (one
    pass on a deterministic model, :func:`eot_passes`).

    Args:
        model: classifier on [0, 1] images (a GSeM model draws fresh noise at every forward).
        x: B x C x H x W input; y: B labels (or any per-example target ``loss_fn`` takes).
        loss_fn: ``loss_fn(logits, y) -> B`` per-example losses (summed, so examples do not rescale each other).
        eot_iter: number of EOT samples (>= 1).
        batched: stack copies of the batch into one forward (False: one forward per sample, as the reference).
        max_batch: most images per batched forward (default :data:`EOT_MAX_BATCH` for the device; at least one copy).
    Returns:
        ``(grad, loss)``: B x C x H x W mean gradient and the B per-example losses averaged over the passes.
    """
    n = eot_passes(model, eot_iter)
    x = x.detach()
    b = x.shape[0]
    cap = max_batch or EOT_MAX_BATCH.get(x.device.type, 1024)
    per = max(1, min(n, cap // max(b, 1))) if batched else 1  # copies of the batch per forward, at most
    per = math.ceil(n / math.ceil(n / per))  # the same number of copies in every forward (no small last chunk)
    grad = torch.zeros_like(x)
    loss_sum = torch.zeros(b, device=x.device)
    for done in range(0, n, per):
        m = min(per, n - done)
        xr = x.repeat(m, *[1] * (x.dim() - 1)).requires_grad_(True)
        losses = loss_fn(model(xr), y.repeat(m, *[1] * (y.dim() - 1)))
        (g,) = torch.autograd.grad(losses.sum(), xr)
        grad += g.view(m, *x.shape).sum(0)
        loss_sum += losses.detach().float().view(m, b).sum(0)
    return grad / n, loss_sum / n


def eot_backward(loss_fn, eot_iter: int = 1, model=None, params=None):
    """Accumulate weight gradients over ``eot_iter`` noisy passes (the GSeM reference's ``gra_eot_num``): calls
    ``loss_fn() -> (loss, logits, terms)`` that many times, backpropagating each loss, then divides the accumulated
    ``.grad`` of ``params`` (default ``model.parameters()``; zero or None before the call) by ``eot_iter``, the
    reference's order of operations (``p.grad.data /= gra_eot_num``), so the result is the mean gradient and
    train-mode BatchNorm sees separate updates, as in the reference.

    With a DistributedDataParallel ``model``, gradients are synchronised once, on the last pass.
    Returns:
        ``(mean loss, logits of the last pass, mean terms)``, all detached.
    """
    if eot_iter < 1:
        raise ValueError(f"EOT needs eot_iter >= 1, got {eot_iter}")
    params = list(model.parameters() if params is None else params)
    total, sums = 0.0, {}
    for i in range(eot_iter):
        sync = i == eot_iter - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            loss, logits, terms = loss_fn()
            loss.backward()
        total = total + loss.detach()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach()
    if eot_iter > 1:
        for p in params:
            if p.grad is not None:
                p.grad.div_(eot_iter)
    return total / eot_iter, logits.detach(), {k: v / eot_iter for k, v in sums.items()}
