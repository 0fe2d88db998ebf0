"""stAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018), in two recipes:

- ``stadv`` (:class:`StAdv`, ours, below): per example, Adam and a search over tau; a minimum-deformation attack that
  does not give up;
- ``stadv-ref`` (:class:`StAdvReference`): the recipe of the stAdv paper's released code (rakutentech/stAdv v0.2.1
  and its demo): a fixed tau = 0.05, one SciPy L-BFGS-B problem per image (factr 10, m 20) from the demo's U[0, 1)
  px start, its smoothness term (4 diagonal neighbours, per-pixel root, zero padding) and its warp (coordinates
  clipped to the image). The one comparable with papers that ran stAdv.

The rest of this docstring is about ``stadv``.

Minimises, over a per-pixel flow f in **pixels** (B x 2 x H x W, channel 0 horizontal),
    L_adv(x, f) + tau * L_flow(f)
with the C&W margin L_adv = max(Z_y - max_{i != y} Z_i + kappa, 0) (untargeted) or
max(max_{i != t} Z_i - Z_t + kappa, 0) (targeted to t), and the flow smoothness
L_flow = sum_p sum_{q in N(p)} sqrt(||f(p) - f(q)||^2 + 1e-8) over the 4-connected neighbours inside the image
(per-pixel square root, Eq. 4). Warping is bilinear with border padding (coordinates clipped to the image), through
the shared warp helper.

The optimisation is per example: Adam steps on the flow (per-coordinate, so no example steers another's step, unlike
one L-BFGS line search shared by the batch), and an example leaves the batch once it is fooled. The smoothness
weight is searched per example as C&W search their constant: start at ``tau``; after a round that fooled the
example, a smoother flow is tried (tau x 10 until a failure, then bisection), after a round that failed, a rougher one
(tau / 10 until a success, then bisection). The smoothest fooling flow of all rounds is returned (the sqrt penalty
acts like total variation, so a fixed tau either fools or gives up; the search makes the attack find the smoothest
flow that succeeds instead of giving up). An example never fooled is returned unchanged.

Units: ``last_flow`` holds the result in normalised align_corners=True units (1 px = 2 / (W - 1)), zero where the
attack failed; ``last_success`` the per-example success.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import fmin_l_bfgs_b

from utils.argtypes import nonneg_float, positive_float, positive_int
from utils.flow import pixel_flow_to_normalized, warp

from .base import Attack
from .registry import Knob, register_attack


def flow_smoothness(f: torch.Tensor) -> torch.Tensor:
    """Per-example L_flow of a B x 2 x H x W pixel flow (4-connected neighbours, per-pair square root)."""
    dx = f[..., :, 1:] - f[..., :, :-1]  # horizontal neighbours, each pair counted from both sides
    dy = f[..., 1:, :] - f[..., :-1, :]
    sx = (dx.pow(2).sum(1) + 1e-8).sqrt().flatten(1).sum(1)
    sy = (dy.pow(2).sum(1) + 1e-8).sqrt().flatten(1).sum(1)
    return 2 * (sx + sy)


def margin_loss(logits, y, kappa=0.0, targeted=False):
    """Per-example C&W margin: distance (in logits) still to go before the attack succeeds, floored at 0."""
    one_hot = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    label = logits.masked_select(one_hot)
    other = logits.masked_fill(one_hot, float("-inf")).max(1)[0]
    gap = other - label + kappa if targeted else label - other + kappa
    return gap.clamp(min=0)


class StAdv(Attack):
    """Args:
        model: classifier on [0, 1] images.
        tau: the smoothness weight the search starts from (the paper's 0.05).
        steps: Adam iterations per search round, at most (an example stops as soon as it is fooled).
        search_steps: rounds of the search over tau (1 = a fixed tau, as the paper).
        lr: Adam step, pixels.
        kappa: margin; targeted: then ``y`` holds the targets.
        init_std: std (pixels) of a random initial flow (0 = zero flow).
    """

    produces_flow = True
    PATIENCE = 10  # steps without a 0.1 % improvement of the objective before an example leaves a round

    def __init__(self, model, tau=0.05, steps=50, search_steps=4, lr=0.02, kappa=0.0, targeted=False,
                 init_std=0.0):
        super().__init__(model)
        self.tau, self.steps, self.search_steps, self.lr = tau, int(steps), int(search_steps), lr
        self.kappa, self.targeted, self.init_std = kappa, targeted, init_std
        self.last_flow = self.last_success = None

    def _fooled(self, logits, y):
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    def _round(self, x, y, tau):
        """One round of Adam at per-example ``tau``: an example leaves once fooled, or once its objective has not
        improved by 0.1 % for ``PATIENCE`` steps. Returns the first fooling flow of each example and a mask."""
        b = x.shape[0]
        f = torch.randn(b, 2, *x.shape[-2:], device=x.device, dtype=x.dtype) * self.init_std
        m, v = torch.zeros_like(f), torch.zeros_like(f)
        found, done = torch.zeros_like(f), torch.zeros(b, dtype=torch.bool, device=x.device)
        fooled_any = torch.zeros(b, dtype=torch.bool, device=x.device)
        best = torch.full((b,), math.inf, device=x.device, dtype=x.dtype)
        stall = torch.zeros(b, dtype=torch.long, device=x.device)
        beta1, beta2 = 0.9, 0.999
        for t in range(1, self.steps + 1):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            fi = f[idx].requires_grad_(True)
            logits = self.model(warp(x[idx], pixel_flow_to_normalized(fi), padding_mode="border"))
            fooled = self._fooled(logits.detach(), y[idx])
            found[idx[fooled]] = fi.detach()[fooled]
            fooled_any[idx[fooled]] = True
            loss = margin_loss(logits, y[idx], self.kappa, self.targeted) + tau[idx] * flow_smoothness(fi)
            improved = loss.detach() < best[idx] - 1e-3 * best[idx].abs().clamp_min(1e-12)
            best[idx] = torch.minimum(best[idx], loss.detach())
            stall[idx] = torch.where(improved, 0, stall[idx] + 1)
            done[idx] = fooled | (stall[idx] >= self.PATIENCE)
            (g,) = torch.autograd.grad(loss.sum(), fi)
            m[idx] = beta1 * m[idx] + (1 - beta1) * g
            v[idx] = beta2 * v[idx] + (1 - beta2) * g * g
            step = self.lr * (m[idx] / (1 - beta1 ** t)) / ((v[idx] / (1 - beta2 ** t)).sqrt() + 1e-12)
            f[idx] = fi.detach() - step
        return found, fooled_any

    def perturb(self, x, y):
        b = x.shape[0]
        tau = torch.full((b,), float(self.tau), device=x.device, dtype=x.dtype)
        lo, hi = torch.zeros_like(tau), torch.full_like(tau, math.inf)  # tau known to fool / known to fail
        best_f = torch.zeros(b, 2, *x.shape[-2:], device=x.device, dtype=x.dtype)
        best_smooth = torch.full((b,), math.inf, device=x.device, dtype=x.dtype)
        for _ in range(max(self.search_steps, 1) if self.steps > 0 else 0):
            found, fooled = self._round(x, y, tau)
            smooth = flow_smoothness(found)
            better = fooled & (smooth < best_smooth)
            best_smooth = torch.where(better, smooth, best_smooth)
            best_f = torch.where(better.view(-1, 1, 1, 1), found, best_f)
            lo, hi = torch.where(fooled, tau, lo), torch.where(fooled, hi, tau)
            tau = torch.where(torch.isinf(hi), tau * 10, torch.where(lo > 0, (lo + hi) / 2, tau / 10))
        with torch.no_grad():
            x_def = warp(x, pixel_flow_to_normalized(best_f), padding_mode="border").clamp(0, 1)
            success = torch.isfinite(best_smooth) & self._fooled(self.model(x_def), y)
        self.last_flow = pixel_flow_to_normalized(best_f) * success.view(-1, 1, 1, 1)
        self.last_success = success
        self.last_stats = {"smoothness": torch.where(success, flow_smoothness(best_f), torch.zeros_like(best_smooth))}
        return torch.where(success.view(-1, 1, 1, 1), x_def, x)


def released_flow_loss(f: torch.Tensor, padding: str = "constant") -> torch.Tensor:
    """rakutentech/stAdv's ``flow_loss`` (v0.2, after commit c7ebb7d "Fix incorrect calculation of flow_loss") of a
    B x 2 x H x W pixel flow, per example: the flow padded by one pixel (``constant``: zeros, the released demo's
    CONSTANT; ``symmetric``: the package default, which for one pixel repeats the edge), then per pixel p and each of
    its 4 diagonal neighbours q, sqrt(||f(p) - f(q)||^2 + 1e-8), summed over neighbours and pixels."""
    padded = F.pad(f, (1, 1, 1, 1), mode="constant" if padding == "constant" else "replicate")
    h, w = f.shape[-2:]
    total = 0
    for dy, dx in ((2, 2), (2, 0), (0, 2), (0, 0)):  # bottom right, bottom left, top right, top left
        shifted = padded[..., dy:dy + h, dx:dx + w]
        total = total + ((f - shifted).pow(2).sum(1) + 1e-8).sqrt()
    return total.flatten(1).sum(1)


def image_seed(x: torch.Tensor, seed: int) -> int:
    """A seed drawn from one image's bytes and ``seed``: the random start of an image does not depend on which images
    share its batch, or where it sits in it."""
    data = x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return (zlib.crc32(data) ^ (seed * 0x9E3779B1)) & 0xFFFFFFFF


class StAdvReference(Attack):
    """The stAdv paper's released recipe (rakutentech/stAdv v0.2.1 and its MNIST demo), untargeted: per image, its
    own L-BFGS-B problem (SciPy, factr 10, m 20, at most ``max_iter`` iterations and evaluations), minimising
    max(Z_y - max_{i != y} Z_i, -kappa) + tau * L_flow (:func:`released_flow_loss`, zero padding as the demo) from the
    demo's U[0, 1) px start (``init="uniform"``; drawn from the image's own seed, :func:`image_seed`) or from a zero
    flow (``init="zero"``). One image per problem and per forward, so a point's result never depends on the batch it
    is evaluated in. An image the final flow does not fool comes back unchanged.

    Args: tau (0.05, the demo's), max_iter (iterations and evaluations per image), kappa (0), init, seed."""

    produces_flow = True

    def __init__(self, model, tau=0.05, max_iter=200, kappa=0.0, init="uniform", seed=0):
        super().__init__(model)
        if init not in ("uniform", "zero"):
            raise ValueError(f"stadv-ref init must be 'uniform' or 'zero', got {init!r}")
        self.tau, self.max_iter, self.kappa, self.init, self.seed = tau, int(max_iter), kappa, init, int(seed)
        self.last_flow = self.last_success = None

    def _warp(self, x, f):
        return warp(x, pixel_flow_to_normalized(f), padding_mode="border")  # = the released coordinate clipping

    def _start(self, xi):
        shape = (1, 2, *xi.shape[-2:])
        if self.init == "zero":
            return np.zeros(int(np.prod(shape)))
        return np.random.default_rng(image_seed(xi, self.seed)).random(int(np.prod(shape)))

    def _one(self, xi, yi):
        shape = (1, 2, *xi.shape[-2:])

        def loss_and_grad(v):
            f = torch.tensor(v, dtype=xi.dtype, device=xi.device).view(shape).requires_grad_(True)
            loss = (margin_loss(self.model(self._warp(xi, f)), yi, self.kappa)
                    + self.tau * released_flow_loss(f)).sum()
            (g,) = torch.autograd.grad(loss, f)
            if not torch.isfinite(loss) or not torch.isfinite(g).all():
                raise FloatingPointError("stadv-ref: the loss or its gradient is not finite")
            return loss.item(), g.detach().double().cpu().numpy().ravel()

        v, _, _ = fmin_l_bfgs_b(loss_and_grad, self._start(xi), factr=10.0, m=20, maxiter=self.max_iter,
                                maxfun=self.max_iter)
        return torch.tensor(v, dtype=xi.dtype, device=xi.device).view(shape)

    def perturb(self, x, y):
        f = torch.cat([self._one(x[i:i + 1], y[i:i + 1]) for i in range(x.shape[0])])
        with torch.no_grad():
            x_def = torch.cat([self._warp(x[i:i + 1], f[i:i + 1]) for i in range(x.shape[0])]).clamp(0, 1)
            success = torch.cat([self.model(x_def[i:i + 1]).argmax(1) for i in range(x.shape[0])]) != y
        self.last_flow = pixel_flow_to_normalized(f) * success.view(-1, 1, 1, 1)
        self.last_success = success
        self.last_stats = {"smoothness": released_flow_loss(f) * success}
        return torch.where(success.view(-1, 1, 1, 1), x_def, x)


STADV_KNOBS = (
    Knob("stadv_tau", nonneg_float, 0.05, "stAdv smoothness weight tau where its per-example search starts (the "
         "paper's)"),
    Knob("stadv_steps", positive_int, 50, "stAdv Adam iterations per search round", steps=True),
    Knob("stadv_search_steps", positive_int, 4, "stAdv rounds of the search over tau (1 = fixed tau)"),
    Knob("stadv_lr", positive_float, 0.02, "stAdv Adam step", unit="px"),
    Knob("stadv_init_std", nonneg_float, 0.0, "std of stAdv's random initial flow (0 = zero flow)", unit="px"),
)


@register_attack("stadv", *STADV_KNOBS)
def stadv(model, cfg):
    """stAdv (Xiao et al. 2018), ours: untargeted, per example, Adam and a C&W-style search over tau."""
    return StAdv(model, tau=cfg.stadv_tau, steps=cfg.stadv_steps,
                 search_steps=cfg.stadv_search_steps, lr=cfg.stadv_lr, init_std=cfg.stadv_init_std)


@register_attack("stadv-ref", Knob("stadv_ref_tau", nonneg_float, 0.05, "smoothness weight of the released stAdv "
                                   "recipe (fixed)"),
                 Knob("stadv_ref_max_iter", positive_int, 200, "L-BFGS-B iterations and evaluations per image at most "
                      "(SciPy's default of 15000 takes hours per 100 points on a CPU)", steps=True),
                 Knob("stadv_ref_init", str, "uniform", "initial flow: the released demo's U[0, 1) px (seeded per "
                      "image) or zero", choices=("uniform", "zero")))
def stadv_reference(model, cfg):
    """stAdv as its paper's released code runs it: fixed tau 0.05, one L-BFGS-B problem per image, untargeted."""
    return StAdvReference(model, tau=cfg.stadv_ref_tau, max_iter=cfg.stadv_ref_max_iter,
                          init=cfg.stadv_ref_init, seed=cfg.seed)
