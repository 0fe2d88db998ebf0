"""stAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018), batched, L-BFGS.

Minimises, over a per-pixel flow f in **pixels** (B x 2 x H x W, channel 0 horizontal),
    L_adv(x, f) + tau * L_flow(f)
with the C&W margin L_adv = max(Z_y - max_{i != y} Z_i + kappa, 0) (untargeted) or
max(max_{i != t} Z_i - Z_t + kappa, 0) (targeted to t), and the flow smoothness
L_flow = sum_p sum_{q in N(p)} sqrt(||f(p) - f(q)||^2 + 1e-8) over the 4-connected neighbours inside the image
(per-pixel square root, Eq. 4). Warping is bilinear with border padding (coordinates clipped to the image), through
the shared warp helper. torch.optim.LBFGS (strong Wolfe line search), at most ``steps`` iterations on the whole batch.

Budget: none (stAdv is a minimum-deformation attack); the flow norms of each example are kept in ``last_flow``
(normalised units, 1 px = 2 / (W - 1)) and ``last_success``. An example for which no misclassifying flow was found
is returned unchanged (never zeros). Defaults tau = 0.05 (the usual stAdv setting; the FGR paper's is unconfirmed),
kappa = 0, 100 L-BFGS iterations.
"""
from __future__ import annotations

import torch

from utils.flow import pixel_flow_to_normalized, warp

from .base import Attack


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
    """Args: tau (smoothness weight), steps (L-BFGS iteration cap), kappa (margin), targeted (then ``y`` holds the
    targets), lr (L-BFGS step scale), history_size."""

    produces_flow = True

    def __init__(self, model, tau=0.05, steps=100, kappa=0.0, targeted=False, lr=1.0, history_size=20):
        super().__init__(model)
        self.tau, self.steps, self.kappa, self.targeted = tau, int(steps), kappa, targeted
        self.lr, self.history_size = lr, history_size
        self.last_flow = self.last_success = None

    def _succeeded(self, logits, y):
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    def perturb(self, x, y):
        b, _, h, w = x.shape
        f = torch.zeros(b, 2, h, w, device=x.device, dtype=x.dtype, requires_grad=True)
        best_f = torch.zeros_like(f)
        best_smooth = torch.full((b,), float("inf"), device=x.device)
        opt = torch.optim.LBFGS([f], lr=self.lr, max_iter=self.steps, history_size=self.history_size,
                                line_search_fn="strong_wolfe")

        def closure():
            nonlocal best_f, best_smooth
            opt.zero_grad()
            logits = self.model(warp(x, pixel_flow_to_normalized(f), padding_mode="border"))
            smooth = flow_smoothness(f)
            loss = (margin_loss(logits, y, self.kappa, self.targeted) + self.tau * smooth).sum()
            loss.backward()
            with torch.no_grad():  # keep, per example, the smoothest flow that fooled the model so far
                better = self._succeeded(logits, y) & (smooth < best_smooth)
                best_smooth = torch.where(better, smooth, best_smooth)
                best_f = torch.where(better.view(-1, 1, 1, 1), f.detach(), best_f)
            return loss

        if self.steps > 0:
            opt.step(closure)
        success = torch.isfinite(best_smooth)
        flow = pixel_flow_to_normalized(best_f) * success.view(-1, 1, 1, 1)
        with torch.no_grad():
            x_adv = torch.where(success.view(-1, 1, 1, 1), warp(x, flow, padding_mode="border").clamp(0, 1), x)
        self.last_flow, self.last_success = flow, success
        return x_adv
