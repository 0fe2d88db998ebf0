"""ADef: iterative linearised adversarial deformations (Alaifari, Alberti & Gauksson, ICLR 2019), batched.

Each iteration linearises the classifier around the current deformed image y = x(p + tau(p)) and, for each candidate
class k (the next most likely classes), solves for the smallest vector field that moves the logit difference
f_k = F_k - F_l to 0 through the image gradient: alpha_k(p) = (sum_c g_c(p) d1_c(p), sum_c g_c(p) d2_c(p)), with g the
input gradient of f_k and d1, d2 the image's x/y finite differences; with smoothing sigma > 0 the step is
-f_k * S(S alpha) / ||S alpha||^2 (S: Gaussian filter, support 2 round(4 sigma) + 1, zero padding). The candidate with
the smallest T-norm (largest displacement length) is taken; the field accumulates and every iterate is recomputed
from the original image (bilinear warp, border padding, shared warp helper). Failed points and points left on a
decision boundary get the overshoot: tau is scaled by min(eta, max_norm / ||tau||_T) when that is >= 1.

Units: tau in pixels (the ADef convention); ``last_flow`` holds it in normalised align_corners=True units
(1 px = 2 / (W - 1)). Budget: optional ``max_norm`` on the T-norm, in pixels (default none). Defaults sigma 0.5,
eta 1.2, 100 iterations, 9 candidates (the ADef CIFAR-10 demo settings; the FGR paper's are unconfirmed). A point
not fooled is returned unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils.flow import pixel_flow_to_normalized, warp

from .base import Attack


def gaussian_filter(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable normalised Gaussian filter on each channel of B x C x H x W, zero padding."""
    if sigma <= 0:
        return field
    radius = int(round(4 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
    k = torch.exp(-t.pow(2) / (2 * sigma * sigma))
    k = k / k.sum()
    c = field.shape[1]
    out = F.conv2d(field, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def t_norm(tau: torch.Tensor) -> torch.Tensor:
    """Per-example largest displacement length of a B x 2 x H x W field."""
    return tau.pow(2).sum(1).sqrt().flatten(1).max(1)[0]


class ADef(Attack):
    """Args: sigma (smoothing, px), overshoot (eta), steps (iteration cap), candidates (number of next most likely
    classes tried per iteration), max_norm (T-norm budget in px, or None)."""

    produces_flow = True

    def __init__(self, model, sigma=0.5, overshoot=1.2, steps=100, candidates=9, max_norm=None):
        super().__init__(model)
        self.sigma, self.overshoot, self.steps = sigma, overshoot, int(steps)
        self.candidates, self.max_norm = int(candidates), max_norm
        self.last_flow = self.last_success = None

    def _warp(self, x, tau):
        return warp(x, pixel_flow_to_normalized(tau), padding_mode="border")

    def perturb(self, x, y):
        b, _, h, w = x.shape
        tau = torch.zeros(b, 2, h, w, device=x.device, dtype=x.dtype)
        n_cand = min(self.candidates, self.model(x[:1]).shape[1] - 1)
        max_norm = math.inf if self.max_norm is None else self.max_norm
        for _ in range(self.steps):
            xd = self._warp(x, tau).detach().requires_grad_(True)
            logits = self.model(xd)
            active = logits.argmax(1) == y
            if not active.any():
                break
            d1 = torch.gradient(xd.detach(), dim=3)[0]  # x-derivative: central inside, one-sided at the edges
            d2 = torch.gradient(xd.detach(), dim=2)[0]
            others = logits.detach().masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
            ranked = others.argsort(1, descending=True)[:, :n_cand]
            label_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1)
            best = tau.clone()
            best_norm = torch.full((b,), math.inf, device=x.device, dtype=x.dtype)
            for j in range(n_cand):
                fk = logits.gather(1, ranked[:, j:j + 1]).squeeze(1) - label_logit  # negative while correct
                (g,) = torch.autograd.grad(fk.sum(), xd, retain_graph=j < n_cand - 1)
                alpha = torch.stack([(g * d1).sum(1), (g * d2).sum(1)], dim=1)
                beta = gaussian_filter(alpha, self.sigma)
                direction = gaussian_filter(beta, self.sigma)
                denom = beta.pow(2).flatten(1).sum(1).clamp_min(1e-20)
                cand = tau - (fk.detach() / denom).view(-1, 1, 1, 1) * direction
                norm = t_norm(cand)
                take = active & (norm < best_norm) & (norm <= max_norm)
                best = torch.where(take.view(-1, 1, 1, 1), cand, best)
                best_norm = torch.where(take, norm, best_norm)
            if torch.equal(best, tau):
                break  # nothing changes (all candidates over budget)
            tau = best
        with torch.no_grad():
            logits = self.model(self._warp(x, tau))
            top2 = logits.topk(2, dim=1)[0]
            boundary = (top2[:, 0] - top2[:, 1]).abs() < 1e-6
            failed = logits.argmax(1) == y
            norm = t_norm(tau).clamp_min(1e-12)
            factor = torch.minimum(torch.full_like(norm, self.overshoot), max_norm / norm)
            scale = (failed | boundary) & (factor >= 1) & (norm > 1e-12)
            tau = torch.where(scale.view(-1, 1, 1, 1), tau * factor.view(-1, 1, 1, 1), tau)
            x_def = self._warp(x, tau).clamp(0, 1)
            success = self.model(x_def).argmax(1) != y
            tau = tau * success.view(-1, 1, 1, 1)
        self.last_flow, self.last_success = pixel_flow_to_normalized(tau), success
        return torch.where(success.view(-1, 1, 1, 1), x_def, x)
