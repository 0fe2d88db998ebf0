"""stAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018), in two recipes:

- ``stadv`` (:class:`StAdv`, ours, below): per example, Adam and a search over tau; a minimum-deformation attack that
  does not give up;
- ``stadv-ref`` (:class:`StAdvReference`): the recipe of the stAdv paper's released code (rakutentech/stAdv): a
  fixed tau = 0.05, the whole batch's loss minimised jointly by SciPy's L-BFGS-B to convergence (factr 10, m 20)
  from a zero flow, its smoothness term (per diagonal direction, the root of the image's summed squared flow
  differences) and its warp (coordinates clipped to the image). The one comparable with papers that ran stAdv.

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

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import fmin_l_bfgs_b

from utils.argtypes import nonneg_float, positive_float, positive_int
from utils.flow import pixel_flow_to_normalized, warp

from .base import Attack
from .registry import STEPS_SCALE, Knob, register_attack, scaled


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


def diagonal_smoothness(f: torch.Tensor) -> torch.Tensor:
    """The released stAdv code's L_flow of a B x 2 x H x W pixel flow: the flow padded by one pixel at the edges
    (symmetric padding, which for one pixel repeats the edge), and for each of the 4 diagonal neighbours q the root of
    the image's sum of ||f(p) - f(q)||^2 (+ 1e-8, so that the zero flow has a gradient); the four summed. Per
    example."""
    padded = F.pad(f, (1, 1, 1, 1), mode="replicate")
    h, w = f.shape[-2:]
    total = 0
    for dy, dx in ((2, 2), (2, 0), (0, 2), (0, 0)):
        shifted = padded[..., dy:dy + h, dx:dx + w]
        total = total + ((f - shifted).pow(2).flatten(1).sum(1) + 1e-8).sqrt()
    return total


class StAdvReference(Attack):
    """The stAdv paper's released recipe (rakutentech/stAdv), untargeted: minimise, over the whole batch's flows
    jointly, sum_b [max(Z_y - max_{i != y} Z_i, -kappa) + tau * L_flow] (:func:`diagonal_smoothness`) with SciPy's
    L-BFGS-B (factr 10, m 20, at most ``max_iter`` iterations and evaluations) from a zero flow; an example the final
    flow does not fool comes back unchanged.

    Args: tau (0.05, the paper's), max_iter (SciPy's default 15000), kappa (0)."""

    produces_flow = True

    def __init__(self, model, tau=0.05, max_iter=15000, kappa=0.0):
        super().__init__(model)
        self.tau, self.max_iter, self.kappa = tau, int(max_iter), kappa
        self.last_flow = self.last_success = None

    def _warp(self, x, f):
        return warp(x, pixel_flow_to_normalized(f), padding_mode="border")

    def perturb(self, x, y):
        shape = (x.shape[0], 2, *x.shape[-2:])

        def loss_and_grad(v):
            f = torch.tensor(v, dtype=x.dtype, device=x.device).view(shape).requires_grad_(True)
            loss = (margin_loss(self.model(self._warp(x, f)), y, self.kappa)
                    + self.tau * diagonal_smoothness(f)).sum()
            (g,) = torch.autograd.grad(loss, f)
            if not torch.isfinite(loss) or not torch.isfinite(g).all():
                raise FloatingPointError("stadv-ref: the loss or its gradient is not finite")
            return loss.item(), g.detach().double().cpu().numpy().ravel()

        v, _, _ = fmin_l_bfgs_b(loss_and_grad, np.zeros(int(np.prod(shape))), factr=10.0, m=20,
                                maxiter=self.max_iter, maxfun=self.max_iter)
        f = torch.tensor(v, dtype=x.dtype, device=x.device).view(shape)
        with torch.no_grad():
            x_def = self._warp(x, f).clamp(0, 1)
            success = self.model(x_def).argmax(1) != y
        self.last_flow = pixel_flow_to_normalized(f) * success.view(-1, 1, 1, 1)
        self.last_success = success
        self.last_stats = {"smoothness": diagonal_smoothness(f) * success}
        return torch.where(success.view(-1, 1, 1, 1), x_def, x)


STADV_KNOBS = (
    Knob("stadv_tau", nonneg_float, 0.05, "stAdv smoothness weight tau where its per-example search starts (the "
         "paper's)"),
    Knob("stadv_steps", positive_int, 50, "stAdv Adam iterations per search round"),
    Knob("stadv_search_steps", positive_int, 4, "stAdv rounds of the search over tau (1 = fixed tau)"),
    Knob("stadv_lr", positive_float, 0.02, "stAdv Adam step", unit="px"),
    Knob("stadv_init_std", nonneg_float, 0.0, "std of stAdv's random initial flow (0 = zero flow)", unit="px"),
)


@register_attack("stadv", *STADV_KNOBS, STEPS_SCALE)
def stadv(model, cfg):
    """stAdv (Xiao et al. 2018), ours: untargeted, per example, Adam and a C&W-style search over tau."""
    return StAdv(model, tau=cfg.stadv_tau, steps=scaled(cfg.stadv_steps, cfg.steps_scale),
                 search_steps=cfg.stadv_search_steps, lr=cfg.stadv_lr, init_std=cfg.stadv_init_std)


@register_attack("stadv-ref", Knob("stadv_ref_tau", nonneg_float, 0.05, "smoothness weight of the released stAdv "
                                   "recipe (fixed)"),
                 Knob("stadv_ref_max_iter", positive_int, 15000, "L-BFGS-B iterations and evaluations at most (SciPy's "
                      "default: to convergence)"), STEPS_SCALE)
def stadv_reference(model, cfg):
    """stAdv as its paper's released code runs it: fixed tau 0.05, joint L-BFGS-B from a zero flow, untargeted."""
    return StAdvReference(model, tau=cfg.stadv_ref_tau, max_iter=scaled(cfg.stadv_ref_max_iter, cfg.steps_scale))
