"""ADef: iterative linearised adversarial deformations (Alaifari, Alberti & Gauksson, ICLR 2019), batched.

Each iteration linearises the classifier around the current deformed image y = x(p + tau(p)) and, for each candidate
class k (the next most likely classes), solves for the smallest vector field that moves the logit difference
f_k = F_k - F_l to 0 through the image gradient: alpha_k(p) = (sum_c g_c(p) d1_c(p), sum_c g_c(p) d2_c(p)), with g the
input gradient of f_k and d1, d2 the image's x/y finite differences; with smoothing sigma > 0 the step is
-f_k * S(S alpha) / ||S alpha||^2 (S: Gaussian filter, zero padding). The candidate with
the smallest T-norm (largest displacement length) is taken; the field accumulates and every iterate is recomputed
from the original image (bilinear warp, border padding, shared warp helper). Failed points and points left on a
decision boundary (top two logits within ``margin``, 1e-3; the ADef code's 1e-6) get the overshoot: tau is scaled by
min(eta, max_norm / ||tau||_T) when that is >= 1.

Units: tau in pixels (the ADef convention); ``last_flow`` holds it in normalised align_corners=True units
(1 px = 2 / (W - 1)). Budget: optional ``max_norm`` on the T-norm, in pixels (default none). Defaults sigma 0.5,
eta 1.2, 100 iterations, 9 candidates (the ADef CIFAR-10 demo settings; the FGR paper's are unconfirmed). A point
not fooled is returned unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils.argtypes import nonneg_float, positive_float, positive_int
from utils.flow import pixel_flow_to_normalized, warp

from .base import Attack
from .registry import Budget, Knob, register_attack


def gaussian_filter(field: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable normalised Gaussian filter on each channel of B x C x H x W, zero padding, support
    ``2 * radius + 1`` (default ``round(4 sigma)``)."""
    if sigma <= 0:
        return field
    radius = int(round(4 * sigma)) if radius is None else radius
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
    classes tried per iteration), max_norm (T-norm budget in px, or None), variant:

    - ``official`` (default): as the authors' ADef code: a point stops once its field's T-norm changes by at most
      1e-10, the candidate classes are fixed from the clean image's ranking, the kernel has support
      ``2 * int(4 sigma + 0.5) + 1``;
    - ``improved``: a point iterates until it is fooled or no candidate fits the budget, the candidates are re-ranked
      at every iteration (it fools slightly more), support ``2 * round(4 sigma) + 1``.

    Either way an iteration runs only on the points still classified correctly and still moving.

    ``margin``: a fooled point whose top two logits are closer than this gets the overshoot too, so that a success
    holds when the deformation is re-applied by a warp that differs in the last float digits (default 1e-3; the ADef
    code's 1e-6 is ``margin=0``, which left 1 of 10 re-applied successes on the wrong side of the boundary)."""

    produces_flow = True

    BOUNDARY = 1e-6  # the ADef code's: a point whose top two logits are closer than this sits on a boundary

    def __init__(self, model, sigma=0.5, overshoot=1.2, steps=100, candidates=9, max_norm=None, variant="official",
                 margin=1e-3):
        super().__init__(model)
        if variant not in ("official", "improved"):
            raise ValueError(f"unknown ADef variant {variant!r}; use 'official' or 'improved'")
        self.sigma, self.overshoot, self.steps = sigma, overshoot, int(steps)
        self.candidates, self.max_norm, self.variant = int(candidates), max_norm, variant
        self.radius = int(4 * sigma + 0.5) if variant == "official" else int(round(4 * sigma))
        self.margin = max(float(margin), self.BOUNDARY)
        self.last_flow = self.last_success = None

    def _warp(self, x, tau):
        return warp(x, pixel_flow_to_normalized(tau), padding_mode="border")

    def perturb(self, x, y):
        b, _, h, w = x.shape
        official = self.variant == "official"
        tau = torch.zeros(b, 2, h, w, device=x.device, dtype=x.dtype)
        max_norm = math.inf if self.max_norm is None else self.max_norm
        with torch.no_grad():
            clean = self.model(x)
        n_cand = min(self.candidates, clean.shape[1] - 1)
        ranked_clean = clean.masked_fill(F.one_hot(y, clean.shape[1]).bool(), float("-inf")).argsort(
            1, descending=True)[:, :n_cand]
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)  # only the points still classified correctly and still moving
            if idx.numel() == 0:
                break
            xd = self._warp(x[idx], tau[idx]).detach().requires_grad_(True)
            logits = self.model(xd)
            correct = logits.argmax(1) == y[idx]
            d1 = torch.gradient(xd.detach(), dim=3)[0]  # x-derivative: central inside, one-sided at the edges
            d2 = torch.gradient(xd.detach(), dim=2)[0]
            if official:  # the candidates of the clean image, as the ADef code
                ranked = ranked_clean[idx]
            else:
                others = logits.detach().masked_fill(F.one_hot(y[idx], logits.shape[1]).bool(), float("-inf"))
                ranked = others.argsort(1, descending=True)[:, :n_cand]
            label_logit = logits.gather(1, y[idx].unsqueeze(1)).squeeze(1)
            old = tau[idx]
            best, best_norm = old.clone(), torch.full((idx.numel(),), math.inf, device=x.device, dtype=x.dtype)
            for j in range(n_cand):
                fk = logits.gather(1, ranked[:, j:j + 1]).squeeze(1) - label_logit  # negative while correct
                (g,) = torch.autograd.grad(fk.sum(), xd, retain_graph=j < n_cand - 1)
                alpha = torch.stack([(g * d1).sum(1), (g * d2).sum(1)], dim=1)
                beta = gaussian_filter(alpha, self.sigma, self.radius)
                direction = gaussian_filter(beta, self.sigma, self.radius)
                denom = beta.pow(2).flatten(1).sum(1).clamp_min(1e-20)
                cand = old - (fk.detach() / denom).view(-1, 1, 1, 1) * direction
                norm = t_norm(cand)
                take = correct & (norm < best_norm) & (norm <= max_norm)
                best = torch.where(take.view(-1, 1, 1, 1), cand, best)
                best_norm = torch.where(take, norm, best_norm)
            tau[idx] = best
            if official:  # the ADef code stops once the field's T-norm no longer changes
                moving = (t_norm(best) - t_norm(old)).abs() > 1e-10
            else:  # iterate until fooled or until no candidate fits the budget
                moving = ~torch.eq(best, old).flatten(1).all(1)
            active[idx] = correct & moving
        with torch.no_grad():
            logits = self.model(self._warp(x, tau))
            top2 = logits.topk(2, dim=1)[0]
            boundary = (top2[:, 0] - top2[:, 1]).abs() < self.margin
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


ADEF_KNOBS = (
    Knob("adef_sigma", nonneg_float, 0.5, "ADef Gaussian smoothing of the field", unit="px"),
    Knob("adef_overshoot", positive_float, 1.2, "ADef overshoot eta"),
    Knob("adef_steps", positive_int, 100, "ADef iteration cap", steps=True),
    Knob("adef_candidates", positive_int, 9, "ADef candidate classes per iteration"),
    Knob("adef_max_norm", positive_float, None, "ADef T-norm budget (none: minimum deformation)", unit="px"),
    Knob("adef_variant", str, "official", "official: the ADef code's stopping rule, candidates fixed from the clean "
         "image, its kernel size; improved: iterate to the cap, re-rank candidates every iteration",
         choices=("official", "improved")),
    Knob("adef_margin", nonneg_float, 1e-3, "ADef overshoots a success whose top two logits are closer than this, so "
         "that it survives a re-applied warp (0: the ADef code's 1e-6)", unit="logit"),
)


@register_attack("adef", *ADEF_KNOBS, budget=Budget("adef_max_norm", "tnorm_px"))
def adef(model, cfg):
    """ADef (Alaifari et al. 2019): iterative linearised deformation, smoothed field, T-norm candidates, overshoot."""
    return ADef(model, sigma=cfg.adef_sigma, overshoot=cfg.adef_overshoot,
                steps=cfg.adef_steps, candidates=cfg.adef_candidates,
                max_norm=cfg.adef_max_norm, variant=cfg.adef_variant, margin=cfg.adef_margin)
